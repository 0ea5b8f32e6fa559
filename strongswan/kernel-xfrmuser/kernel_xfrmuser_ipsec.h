/*
 * kernel_ipsec_t forwarding every call to xfrm-user's control socket.
 */
#ifndef KERNEL_XFRMUSER_IPSEC_H_
#define KERNEL_XFRMUSER_IPSEC_H_

#include <kernel/kernel_ipsec.h>

typedef struct kernel_xfrmuser_ipsec_t kernel_xfrmuser_ipsec_t;

struct kernel_xfrmuser_ipsec_t {
	kernel_ipsec_t interface;
};

kernel_xfrmuser_ipsec_t *kernel_xfrmuser_ipsec_create();

#endif
