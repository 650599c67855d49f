/* Prints the vhost ABI facts vireo's TypeScript encodes (src/vhost-net/abi.ts), from the system's own
 * <linux/vhost.h>, as JSON. test/unit/vhost-abi.test.ts compiles and runs this and compares. */
#include <linux/vhost.h>
#include <stdio.h>
#define P(name, value) printf("%s\"%s\": %llu", first ? "" : ",\n", name, (unsigned long long)(value)), first = 0
int main(void) {
  int first = 1;
  printf("{\n");
  P("VHOST_GET_FEATURES", VHOST_GET_FEATURES);
  P("VHOST_SET_FEATURES", VHOST_SET_FEATURES);
  P("VHOST_SET_OWNER", VHOST_SET_OWNER);
  P("VHOST_RESET_OWNER", VHOST_RESET_OWNER);
  P("VHOST_SET_MEM_TABLE", VHOST_SET_MEM_TABLE);
  P("VHOST_SET_VRING_NUM", VHOST_SET_VRING_NUM);
  P("VHOST_SET_VRING_ADDR", VHOST_SET_VRING_ADDR);
  P("VHOST_SET_VRING_BASE", VHOST_SET_VRING_BASE);
  P("VHOST_GET_VRING_BASE", VHOST_GET_VRING_BASE);
  P("VHOST_SET_VRING_KICK", VHOST_SET_VRING_KICK);
  P("VHOST_SET_VRING_CALL", VHOST_SET_VRING_CALL);
  P("VHOST_NET_SET_BACKEND", VHOST_NET_SET_BACKEND);
  P("VHOST_NET_F_VIRTIO_NET_HDR", VHOST_NET_F_VIRTIO_NET_HDR);
  P("VHOST_F_LOG_ALL", VHOST_F_LOG_ALL);
  P("sizeof.vhost_vring_state", sizeof(struct vhost_vring_state));
  P("sizeof.vhost_vring_file", sizeof(struct vhost_vring_file));
  P("sizeof.vhost_vring_addr", sizeof(struct vhost_vring_addr));
  P("sizeof.vhost_memory", sizeof(struct vhost_memory));
  P("sizeof.vhost_memory_region", sizeof(struct vhost_memory_region));
  printf("\n}\n");
  return 0;
}
