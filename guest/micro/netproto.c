/* micro guest: the network test protocol (netproto.h). */
#include "netproto.h"

/* pattern[i] = i & 0xff: the body of frame seq is the run starting at pattern[(seq * 7 + 26) & 0xff]. */
static uint8_t pattern[256 + ETH_FRAME_MAX];
static int pattern_ready;

static const uint8_t *body_of(uint32_t seq)
{
	if (!pattern_ready) {
		for (unsigned i = 0; i < sizeof(pattern); i++)
			pattern[i] = (uint8_t)i;
		pattern_ready = 1;
	}
	return pattern + ((seq * 7u + PROTO_BODY) & 0xFF);
}

/* Index of the first byte where a and b differ, n if none. */
static size_t first_diff(const uint8_t *a, const uint8_t *b, size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t x, y;
		__builtin_memcpy(&x, a + i, 8);
		__builtin_memcpy(&y, b + i, 8);
		if (x != y)
			break;
	}
	while (i < n && a[i] == b[i])
		i++;
	return i;
}

void proto_build_frame(uint8_t *f, const uint8_t *src, uint32_t seq, uint32_t size)
{
	for (unsigned i = 0; i < ETH_ALEN; i++)
		f[i] = 0xFF; /* broadcast */
	copy_bytes(f + ETH_ALEN, src, ETH_ALEN);
	f[12] = PROTO_ETHERTYPE >> 8;
	f[13] = PROTO_ETHERTYPE & 0xFF;
	f[PROTO_MAGIC + 0] = 'V';
	f[PROTO_MAGIC + 1] = 'I';
	f[PROTO_MAGIC + 2] = 'R';
	f[PROTO_MAGIC + 3] = 'O';
	put_le32(f + PROTO_SEQ, seq);
	put_le32(f + PROTO_LEN, size);
	copy_bytes(f + PROTO_BODY, body_of(seq), size - PROTO_BODY);
}

const char *proto_check_frame(const uint8_t *f, uint32_t len, uint32_t want, uint32_t *bad_off)
{
	*bad_off = 0;
	if (len < PROTO_BODY)
		return "shorter than the 26-byte protocol header";
	if (f[PROTO_MAGIC] != 'V' || f[PROTO_MAGIC + 1] != 'I' || f[PROTO_MAGIC + 2] != 'R' || f[PROTO_MAGIC + 3] != 'O')
		return "bad magic (not \"VIRO\")";
	uint32_t seq = get_le32(f + PROTO_SEQ), field = get_le32(f + PROTO_LEN);
	if (field != len)
		return field + 4 == len ? "the length field is 4 less than the received length (FCS not stripped?)"
					: "the length field differs from the received length";
	size_t d = first_diff(f + PROTO_BODY, body_of(seq), len - PROTO_BODY);
	if (d < len - PROTO_BODY) {
		*bad_off = (uint32_t)d + PROTO_BODY;
		return "payload differs";
	}
	if (seq != want)
		return "out of order";
	return "";
}

void proto_report(const char *who, const uint8_t *f, uint32_t len, uint64_t expected, const char *why,
		  uint32_t bad_off)
{
	uint32_t seq = len >= PROTO_BODY ? get_le32(f + PROTO_SEQ) : 0;
	uint32_t field = len >= PROTO_BODY ? get_le32(f + PROTO_LEN) : 0;
	con_printf("%s: invalid frame: seq %u (expected %lu), %u bytes, length field %u: %s", who, seq, expected, len,
		   field, why);
	if (bad_off)
		con_printf(" (offset %u is 0x%02x, expected 0x%02x)", bad_off, f[bad_off], (seq * 7u + bad_off) & 0xFF);
	con_putc('\n');
}

void proto_echo(uint8_t *o, const uint8_t *f, uint32_t len, const uint8_t *mac)
{
	copy_bytes(o, f + ETH_ALEN, ETH_ALEN);
	copy_bytes(o + ETH_ALEN, mac, ETH_ALEN);
	copy_bytes(o + 2 * ETH_ALEN, f + 2 * ETH_ALEN, len - 2 * ETH_ALEN);
}
