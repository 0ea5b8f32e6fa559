/*
 * kernel-xfrmuser: charon's kernel-ipsec interface on the xfrm-user datapath, through its
 * control socket (docs/control-protocol.md). Addresses and routes stay with kernel-netlink.
 */
#ifndef KERNEL_XFRMUSER_PLUGIN_H_
#define KERNEL_XFRMUSER_PLUGIN_H_

#include <plugins/plugin.h>

typedef struct kernel_xfrmuser_plugin_t kernel_xfrmuser_plugin_t;

struct kernel_xfrmuser_plugin_t {
	plugin_t plugin;
};

#endif
