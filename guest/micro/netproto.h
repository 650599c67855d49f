/* micro guest: the network test protocol (README "network test protocol"), shared by the virtio-net and e1000
 * drivers; test/helpers/netpeer.py is the host side. EtherType 0x88B5; after the Ethernet header: "VIRO", u32 LE
 * seq, u32 LE frame length, then the byte at frame offset k is (seq * 7 + k) & 0xff. */
#ifndef NETPROTO_H
#define NETPROTO_H

#include "micro.h"

#define ETH_ALEN 6
#define ETH_HLEN 14
#define ETH_FRAME_MIN 60
#define ETH_FRAME_MAX 1514
#define PROTO_ETHERTYPE 0x88B5
#define PROTO_MAGIC 14 /* frame offsets */
#define PROTO_SEQ 18
#define PROTO_LEN 22
#define PROTO_BODY 26

static inline void copy_bytes(void *d, const void *s, size_t n)
{
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
}

static inline uint32_t get_le32(const uint8_t *p)
{
	return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void put_le32(uint8_t *p, uint32_t v)
{
	for (unsigned i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Whether frame f (len bytes) carries the protocol's EtherType. */
static inline int proto_is_ours(const uint8_t *f, uint32_t len)
{
	return len >= ETH_HLEN && ((f[12] << 8) | f[13]) == PROTO_ETHERTYPE;
}

/* Writes frame seq of `size` bytes (60..1514), broadcast, from `src`. */
void proto_build_frame(uint8_t *f, const uint8_t *src, uint32_t seq, uint32_t size);
/* "" if frame f (len bytes) is valid and carries seq `want`, else what is wrong; for a payload mismatch *bad_off
 * is the first frame offset that differs (0 otherwise). */
const char *proto_check_frame(const uint8_t *f, uint32_t len, uint32_t want, uint32_t *bad_off);
/* Prints "WHO: invalid frame: seq S (expected E), L bytes, length field F: WHY[ (offset O is X, expected Y)]". */
void proto_report(const char *who, const uint8_t *f, uint32_t len, uint64_t expected, const char *why,
		  uint32_t bad_off);
/* Writes into o the echo of frame f (len bytes): dst = its src, src = `mac`, the rest unchanged. */
void proto_echo(uint8_t *o, const uint8_t *f, uint32_t len, const uint8_t *mac);

#endif
