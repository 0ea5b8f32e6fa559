// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * kpeer: the packet pump inside the kernel-peer guest (see ../README.md).
 *
 * It attaches to the guest's TUN devices (made by `ip tuntap`), writes the packets of a pcap
 * into one of them, and records what the kernel does with them:
 *   - every packet the kernel sends out of a TUN device (read(2) on its fd), and
 *   - every packet an nftables `log group G prefix P` rule hands to NFLOG (nfnetlink_log),
 *     which is how the guest sees the packets XFRM has just decapsulated (`meta secpath
 *     exists` in prerouting): a transport-mode packet is delivered locally and never crosses
 *     a device, and a tunnel-mode one would be changed by forwarding (TTL) before it leaves.
 * Each recorded packet goes to the pcap chosen for its device or log prefix (raw IP, link
 * type 101), and the report says which injected packet was being processed when it came.
 *
 * The kernel handles a packet written to a TUN device synchronously (tun_get_user ->
 * tun_rx_batched -> netif_receive_skb under local_bh_disable, softirqs run on
 * local_bh_enable), so after each write the outputs it caused are already queued; a quiet
 * period at the end catches anything deferred.
 *
 * usage: kpeer run --inject DEV --in IN.pcap [--out-dev DEV=FILE]... [--nflog GROUP]
 *                  [--out-log PREFIX=FILE]... [--ttl-bump] [--encap 4|6:PORT:espinudp|nonike]...
 *                  [--quiet-ms N] [--max-ms N] [--report FILE]
 * Devices named in --out-dev are drained even when FILE is "-" (discarded).
 *
 * --ttl-bump: the packet is injected with TTL / hop limit one higher (IPv4 header checksum
 * adjusted so that the kernel's ip_decrease_ttl gives back the original bytes), so that a
 * packet the guest forwards into an SA carries exactly the inner header of the pcap.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <linux/netlink.h>
#include <linux/udp.h>
#include <linux/xfrm.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PKT 65536
#define MAX_DEVS 8
#define MAX_LOGS 8
#define MAX_ENCAP 8

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("kpeer: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(2);
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- pcap ------------------------------------------------------------------------------ */

struct pcap_in {
	FILE *f;
	int swap;
	uint32_t linktype;
};

static uint32_t sw32(uint32_t v, int swap)
{
	return swap ? __builtin_bswap32(v) : v;
}

static void pcap_open_in(struct pcap_in *p, const char *path)
{
	uint32_t hdr[6];
	p->f = fopen(path, "rb");
	if (!p->f)
		die("%s: %s", path, strerror(errno));
	if (fread(hdr, 1, 24, p->f) != 24)
		die("%s: not a pcap file (short header)", path);
	switch (hdr[0]) {
	case 0xa1b2c3d4:
	case 0xa1b23c4d:
		p->swap = 0;
		break;
	case 0xd4c3b2a1:
	case 0x4d3cb2a1:
		p->swap = 1;
		break;
	default:
		die("%s: not a classic pcap file (magic %08x; pcapng is not supported)", path, hdr[0]);
	}
	p->linktype = sw32(hdr[5], p->swap) & 0xffff;
	/* 1 Ethernet; 101 raw IP; 12 and 14 (DLT_RAW on some systems); 228 IPv4; 229 IPv6 */
	if (p->linktype != 1 && p->linktype != 101 && p->linktype != 12 && p->linktype != 14 &&
	    p->linktype != 228 && p->linktype != 229)
		die("%s: link type %u not supported (Ethernet or raw IP only)", path, p->linktype);
}

/* Returns the record length, 0 at the end of the file. */
static size_t pcap_next(struct pcap_in *p, uint8_t *buf, const char *path)
{
	uint32_t rec[4];
	size_t n = fread(rec, 1, 16, p->f);
	if (n == 0)
		return 0;
	if (n != 16)
		die("%s: truncated record header", path);
	uint32_t incl = sw32(rec[2], p->swap);
	if (incl == 0 || incl > MAX_PKT)
		die("%s: record of %u bytes", path, incl);
	if (fread(buf, 1, incl, p->f) != incl)
		die("%s: truncated record", path);
	return incl;
}

static FILE *pcap_open_out(const char *path)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		die("%s: %s", path, strerror(errno));
	/* classic pcap, microseconds, native byte order, snaplen 65535, LINKTYPE_RAW */
	uint32_t hdr[6] = { 0xa1b2c3d4, 2 | (4u << 16), 0, 0, 65535, 101 };
	if (fwrite(hdr, 1, 24, f) != 24)
		die("%s: write: %s", path, strerror(errno));
	return f;
}

static void pcap_write(FILE *f, const uint8_t *pkt, size_t len)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint32_t rec[4] = { (uint32_t)ts.tv_sec, (uint32_t)(ts.tv_nsec / 1000), (uint32_t)len,
			    (uint32_t)len };
	if (fwrite(rec, 1, 16, f) != 16 || fwrite(pkt, 1, len, f) != len)
		die("pcap write: %s", strerror(errno));
}

/* Strips the link header; returns the IP packet or NULL (not IP). */
static const uint8_t *link_strip(uint32_t linktype, const uint8_t *frame, size_t *len)
{
	if (linktype == 1) {
		size_t off = 14;
		if (*len < 14)
			return NULL;
		uint16_t et = (uint16_t)(frame[12] << 8 | frame[13]);
		while ((et == 0x8100 || et == 0x88a8) && *len >= off + 4) {
			et = (uint16_t)(frame[off + 2] << 8 | frame[off + 3]);
			off += 4;
		}
		if (et != 0x0800 && et != 0x86dd)
			return NULL;
		frame += off;
		*len -= off;
	}
	if (*len < 1)
		return NULL;
	uint8_t v = frame[0] >> 4;
	if ((v == 4 && *len >= 20) || (v == 6 && *len >= 40))
		return frame;
	return NULL;
}

/* ---- TTL pre-compensation -------------------------------------------------------------- */

/* The kernel's ip_decrease_ttl (include/net/ip.h), to check our inverse against. */
static void ip_decrease_ttl(uint8_t *iph)
{
	uint16_t c16;
	memcpy(&c16, iph + 10, 2);
	uint32_t check = c16;
	check += htons(0x0100);
	c16 = (uint16_t)(check + (check >= 0xFFFF));
	memcpy(iph + 10, &c16, 2);
	iph[8]--;
}

/* Returns 0 when done exactly, 1 when the kernel's decrement would not give back the same
 * checksum bytes (0x0000/0xffff ambiguity), -1 when impossible (TTL 255). */
static int ttl_bump(uint8_t *pkt, size_t len)
{
	if ((pkt[0] >> 4) == 6) {
		if (len < 40 || pkt[7] == 255)
			return -1;
		pkt[7]++;
		return 0;
	}
	if (len < 20 || pkt[8] == 255)
		return -1;
	uint8_t orig[20];
	memcpy(orig, pkt, 20);
	/* checksum - 0x0100 in one's complement = checksum + 0xfeff with end-around carry
	 * (in network byte order: the TTL is the high byte of its 16-bit word) */
	uint32_t c = (uint32_t)(pkt[10] << 8 | pkt[11]) + 0xfeff;
	c = (c & 0xffff) + (c >> 16);
	pkt[10] = (uint8_t)(c >> 8);
	pkt[11] = (uint8_t)c;
	pkt[8]++;
	uint8_t sim[20];
	memcpy(sim, pkt, 20);
	ip_decrease_ttl(sim);
	return memcmp(sim, orig, 20) ? 1 : 0;
}

/* ---- TUN ------------------------------------------------------------------------------- */

static int tun_attach(const char *name)
{
	struct ifreq ifr;
	int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		die("/dev/net/tun: %s", strerror(errno));
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
	if (strlen(name) >= IFNAMSIZ)
		die("%s: name too long", name);
	strcpy(ifr.ifr_name, name);
	if (ioctl(fd, TUNSETIFF, &ifr) < 0)
		die("TUNSETIFF %s: %s", name, strerror(errno));
	return fd;
}

/* A TUN device gets carrier when its fd is attached, but the kernel only activates its qdisc
 * (dev_activate, from linkwatch, a work item) some time later; until then the device's qdisc
 * is noop and every packet sent to it is dropped without a trace. operstate turns "up" in the
 * same linkwatch pass, so wait for that before injecting anything. */
static void tun_wait_up(const char *name)
{
	char path[64], state[16];
	snprintf(path, sizeof(path), "/sys/class/net/%s/operstate", name);
	for (int waited = 0; waited < 10000; waited += 5) {
		FILE *f = fopen(path, "r");
		if (!f)
			die("%s: %s", path, strerror(errno));
		size_t n = fread(state, 1, sizeof(state) - 1, f);
		fclose(f);
		state[n] = 0;
		if (!strncmp(state, "up", 2))
			return;
		usleep(5000);
	}
	die("%s: operstate not up after 10 s", name);
}

/* ---- nfnetlink_log --------------------------------------------------------------------- */

static void nl_attr(struct nlmsghdr *nh, size_t cap, uint16_t type, const void *data, size_t len)
{
	struct nlattr *a = (struct nlattr *)((char *)nh + NLMSG_ALIGN(nh->nlmsg_len));
	size_t alen = NLA_HDRLEN + len;
	if (NLMSG_ALIGN(nh->nlmsg_len) + NLA_ALIGN(alen) > cap)
		die("netlink message too long");
	a->nla_type = type;
	a->nla_len = (uint16_t)alen;
	memcpy((char *)a + NLA_HDRLEN, data, len);
	nh->nlmsg_len = (uint32_t)(NLMSG_ALIGN(nh->nlmsg_len) + NLA_ALIGN(alen));
}

static void nflog_config(int fd, uint16_t group, int attr, const void *data, size_t len)
{
	static uint32_t seq;
	union {
		struct nlmsghdr nh;
		char buf[256];
	} req;
	memset(&req, 0, sizeof(req));
	req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct nfgenmsg));
	req.nh.nlmsg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
	req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	req.nh.nlmsg_seq = ++seq;
	struct nfgenmsg *g = NLMSG_DATA(&req.nh);
	g->nfgen_family = AF_UNSPEC;
	g->version = NFNETLINK_V0;
	g->res_id = htons(group);
	nl_attr(&req.nh, sizeof(req), (uint16_t)attr, data, len);
	if (send(fd, &req, req.nh.nlmsg_len, 0) < 0)
		die("nflog config send: %s", strerror(errno));
	char ack[1024];
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		if (poll(&pfd, 1, 2000) <= 0)
			die("nflog config: no answer from the kernel");
		ssize_t n = recv(fd, ack, sizeof(ack), 0);
		if (n < 0)
			die("nflog config recv: %s", strerror(errno));
		struct nlmsghdr *nh = (struct nlmsghdr *)ack;
		if (!NLMSG_OK(nh, (size_t)n) || nh->nlmsg_type != NLMSG_ERROR || nh->nlmsg_seq != seq)
			continue;
		struct nlmsgerr *e = NLMSG_DATA(nh);
		if (e->error)
			die("nflog config (group %u, attr %d): %s", group, attr, strerror(-e->error));
		return;
	}
}

static int nflog_open(uint16_t group)
{
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
	if (fd < 0)
		die("netlink socket: %s", strerror(errno));
	int rcvbuf = 8 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf));
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK };
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("netlink bind: %s", strerror(errno));
	struct nfulnl_msg_config_cmd cmd = { .command = NFULNL_CFG_CMD_BIND };
	nflog_config(fd, group, NFULA_CFG_CMD, &cmd, sizeof(cmd));
	struct nfulnl_msg_config_mode mode = { .copy_range = htonl(0xffff),
					       .copy_mode = NFULNL_COPY_PACKET };
	nflog_config(fd, group, NFULA_CFG_MODE, &mode, sizeof(mode));
	/* one packet per netlink message, sent at once */
	uint32_t one = htonl(1);
	nflog_config(fd, group, NFULA_CFG_QTHRESH, &one, sizeof(one));
	nflog_config(fd, group, NFULA_CFG_TIMEOUT, &one, sizeof(one));
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	return fd;
}

/* ---- the run --------------------------------------------------------------------------- */

struct sink {
	const char *key; /* device name or log prefix */
	FILE *pcap;	 /* NULL: drained, not recorded */
	int fd;		 /* devices only */
	unsigned count;
};

static struct sink devs[MAX_DEVS], logs[MAX_LOGS];
static int ndevs, nlogs;
static FILE *report;
static long cause = -1; /* index of the injected packet being processed, -1 before any */
static unsigned nlog_other, encap_datagrams, activity;

static void record(struct sink *s, const char *kind, const uint8_t *pkt, size_t len)
{
	if (s->pcap)
		pcap_write(s->pcap, pkt, len);
	fprintf(report, "%s %s %u len %zu after_in %ld\n", kind, s->key, s->count, len, cause);
	s->count++;
	activity++;
}

static void nflog_read(int fd)
{
	static uint8_t buf[1 << 18];
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			if (errno == ENOBUFS) {
				fprintf(report, "error nflog ENOBUFS (packets lost)\n");
				continue;
			}
			die("nflog recv: %s", strerror(errno));
		}
		for (struct nlmsghdr *nh = (struct nlmsghdr *)buf; NLMSG_OK(nh, (size_t)n);
		     nh = NLMSG_NEXT(nh, n)) {
			if (nh->nlmsg_type != ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET))
				continue;
			const char *prefix = "";
			const uint8_t *payload = NULL;
			size_t plen = 0;
			size_t off = NLMSG_LENGTH(sizeof(struct nfgenmsg));
			while (off + NLA_HDRLEN <= nh->nlmsg_len) {
				struct nlattr *a = (struct nlattr *)((char *)nh + off);
				if (a->nla_len < NLA_HDRLEN || off + a->nla_len > nh->nlmsg_len)
					break;
				const uint8_t *d = (const uint8_t *)a + NLA_HDRLEN;
				size_t dl = a->nla_len - NLA_HDRLEN;
				switch (a->nla_type & NLA_TYPE_MASK) {
				case NFULA_PREFIX:
					if (dl > 0 && d[dl - 1] == 0)
						prefix = (const char *)d;
					break;
				case NFULA_PAYLOAD:
					payload = d;
					plen = dl;
					break;
				}
				off += NLA_ALIGN(a->nla_len);
			}
			if (!payload)
				continue;
			int i;
			for (i = 0; i < nlogs; i++)
				if (!strcmp(logs[i].key, prefix))
					break;
			if (i == nlogs) {
				nlog_other++;
				continue;
			}
			record(&logs[i], "log", payload, plen);
		}
	}
}

static void dev_read(struct sink *s)
{
	static uint8_t buf[MAX_PKT];
	for (;;) {
		ssize_t n = read(s->fd, buf, sizeof(buf));
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			die("read %s: %s", s->key, strerror(errno));
		}
		record(s, "dev", buf, (size_t)n);
	}
}

static void encap_read(int fd)
{
	static uint8_t buf[MAX_PKT];
	while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) >= 0) {
		/* What the encap socket passes up is not ESP (IKE, keepalives): counted only. */
		encap_datagrams++;
		activity++;
	}
}

static int encap_fds[MAX_ENCAP], nencap;
static int nflog_fd = -1;

/* Drains everything readable, waiting at most timeout_ms for the first event. */
static void pump(int timeout_ms)
{
	struct pollfd pfd[MAX_DEVS + MAX_ENCAP + 1];
	int n = 0;
	for (int i = 0; i < ndevs; i++)
		pfd[n++] = (struct pollfd){ .fd = devs[i].fd, .events = POLLIN };
	for (int i = 0; i < nencap; i++)
		pfd[n++] = (struct pollfd){ .fd = encap_fds[i], .events = POLLIN };
	if (nflog_fd >= 0)
		pfd[n++] = (struct pollfd){ .fd = nflog_fd, .events = POLLIN };
	if (poll(pfd, (nfds_t)n, timeout_ms) <= 0)
		return;
	n = 0;
	for (int i = 0; i < ndevs; i++)
		if (pfd[n++].revents)
			dev_read(&devs[i]);
	for (int i = 0; i < nencap; i++)
		if (pfd[n++].revents)
			encap_read(encap_fds[i]);
	if (nflog_fd >= 0 && pfd[n].revents)
		nflog_read(nflog_fd);
}

static void encap_open(const char *spec)
{
	char fam;
	unsigned port;
	char type[32];
	if (sscanf(spec, "%c:%u:%31s", &fam, &port, type) != 3 || (fam != '4' && fam != '6') ||
	    port == 0 || port > 65535)
		die("--encap %s: want 4|6:PORT:espinudp|espinudp-nonike", spec);
	int t;
	if (!strcmp(type, "espinudp"))
		t = UDP_ENCAP_ESPINUDP;
	else if (!strcmp(type, "espinudp-nonike"))
		t = UDP_ENCAP_ESPINUDP_NON_IKE;
	else
		die("--encap %s: type must be espinudp or espinudp-nonike", spec);
	if (nencap == MAX_ENCAP)
		die("too many --encap");
	int af = fam == '4' ? AF_INET : AF_INET6;
	int fd = socket(af, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		die("socket: %s", strerror(errno));
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	int r;
	if (af == AF_INET) {
		struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
		r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	} else {
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		struct sockaddr_in6 sa = { .sin6_family = AF_INET6,
					   .sin6_port = htons((uint16_t)port) };
		r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	}
	if (r < 0)
		die("--encap %s: bind: %s", spec, strerror(errno));
	if (setsockopt(fd, IPPROTO_UDP, UDP_ENCAP, &t, sizeof(t)) < 0)
		die("--encap %s: UDP_ENCAP: %s", spec, strerror(errno));
	/* The UDP datagrams carrying ESP are checked against the in policies before the encap
	 * handler sees them (udp_queue_rcv_one_skb); a transport-mode policy between the two
	 * hosts would drop them as plaintext (XfrmInTmplMismatch). IKE daemons give their NAT-T
	 * socket a bypass policy, in and out; so does this. */
	for (int dir = XFRM_POLICY_IN; dir <= XFRM_POLICY_OUT; dir++) {
		struct xfrm_userpolicy_info pol;
		memset(&pol, 0, sizeof(pol));
		pol.action = XFRM_POLICY_ALLOW;
		pol.dir = (uint8_t)dir;
		pol.sel.family = (uint16_t)af;
		pol.lft.soft_byte_limit = pol.lft.hard_byte_limit = XFRM_INF;
		pol.lft.soft_packet_limit = pol.lft.hard_packet_limit = XFRM_INF;
		if (setsockopt(fd, af == AF_INET ? IPPROTO_IP : IPPROTO_IPV6,
			       af == AF_INET ? IP_XFRM_POLICY : IPV6_XFRM_POLICY, &pol, sizeof(pol)) < 0)
			die("--encap %s: bypass policy: %s", spec, strerror(errno));
	}
	encap_fds[nencap++] = fd;
}

static struct sink *sink_add(struct sink *arr, int *n, int max, const char *spec, int is_dev)
{
	const char *eq = strchr(spec, '=');
	if (!eq || eq == spec || !eq[1])
		die("%s: want NAME=FILE", spec);
	if (*n == max)
		die("too many sinks");
	struct sink *s = &arr[(*n)++];
	s->key = strndup(spec, (size_t)(eq - spec));
	s->pcap = strcmp(eq + 1, "-") ? pcap_open_out(eq + 1) : NULL;
	s->fd = is_dev ? tun_attach(s->key) : -1;
	return s;
}

static int cmd_run(int argc, char **argv)
{
	const char *inject = NULL, *in = NULL, *report_path = "/dev/stdout";
	int group = -1, bump = 0, quiet_ms = 400, max_ms = 20000;
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--ttl-bump")) {
			bump = 1;
			continue;
		}
		if (!v)
			die("%s needs a value", a);
		i++;
		if (!strcmp(a, "--inject"))
			inject = v;
		else if (!strcmp(a, "--in"))
			in = v;
		else if (!strcmp(a, "--out-dev"))
			sink_add(devs, &ndevs, MAX_DEVS, v, 1);
		else if (!strcmp(a, "--out-log"))
			sink_add(logs, &nlogs, MAX_LOGS, v, 0);
		else if (!strcmp(a, "--nflog"))
			group = atoi(v);
		else if (!strcmp(a, "--encap"))
			encap_open(v);
		else if (!strcmp(a, "--quiet-ms"))
			quiet_ms = atoi(v);
		else if (!strcmp(a, "--max-ms"))
			max_ms = atoi(v);
		else if (!strcmp(a, "--report"))
			report_path = v;
		else
			die("unknown option %s", a);
	}
	if (!inject || !in)
		die("run needs --inject DEV and --in FILE");
	report = fopen(report_path, "w");
	if (!report)
		die("%s: %s", report_path, strerror(errno));
	setvbuf(report, NULL, _IOLBF, 0);
	int inject_fd = -1;
	for (int i = 0; i < ndevs; i++)
		if (!strcmp(devs[i].key, inject))
			inject_fd = devs[i].fd;
	if (inject_fd < 0) {
		char *spec;
		if (asprintf(&spec, "%s=-", inject) < 0)
			die("out of memory");
		inject_fd = sink_add(devs, &ndevs, MAX_DEVS, spec, 1)->fd;
	}
	if (nlogs && group < 0)
		die("--out-log needs --nflog GROUP");
	for (int i = 0; i < ndevs; i++)
		tun_wait_up(devs[i].key);
	if (group >= 0)
		nflog_fd = nflog_open((uint16_t)group);

	struct pcap_in pin;
	pcap_open_in(&pin, in);
	static uint8_t frame[MAX_PKT];
	uint8_t pkt[MAX_PKT];
	unsigned injected = 0, skipped = 0, failed = 0;
	uint64_t deadline = now_ms() + (uint64_t)max_ms;
	size_t flen;
	pump(0); /* anything left from before (there should be nothing) is "after_in -1" */
	for (long idx = 0; (flen = pcap_next(&pin, frame, in)) != 0; idx++) {
		size_t len = flen;
		const uint8_t *ip = link_strip(pin.linktype, frame, &len);
		if (!ip) {
			fprintf(report, "in %ld len %zu skipped not-ip\n", idx, flen);
			skipped++;
			continue;
		}
		memcpy(pkt, ip, len);
		const char *note = "";
		if (bump) {
			int r = ttl_bump(pkt, len);
			if (r < 0) {
				fprintf(report, "in %ld len %zu skipped ttl-255\n", idx, len);
				skipped++;
				continue;
			}
			if (r > 0)
				note = " ttl-bump-inexact";
		}
		cause = idx;
		ssize_t w = write(inject_fd, pkt, len);
		if (w != (ssize_t)len) {
			fprintf(report, "in %ld len %zu write-failed %s\n", idx, len,
				w < 0 ? strerror(errno) : "short");
			failed++;
		} else {
			fprintf(report, "in %ld len %zu injected%s\n", idx, len, note);
			injected++;
		}
		pump(0);
		if (now_ms() > deadline)
			die("--max-ms %d exceeded while injecting", max_ms);
	}
	/* quiet period: stop when nothing came for quiet_ms */
	for (;;) {
		unsigned before = activity;
		uint64_t t0 = now_ms();
		while (activity == before && now_ms() - t0 < (uint64_t)quiet_ms)
			pump(quiet_ms);
		if (activity == before)
			break;
		if (now_ms() > deadline) {
			fprintf(report, "error max-ms exceeded while draining\n");
			break;
		}
	}
	fprintf(report, "summary injected %u skipped %u write_failed %u", injected, skipped, failed);
	for (int i = 0; i < ndevs; i++)
		fprintf(report, " dev:%s %u", devs[i].key, devs[i].count);
	for (int i = 0; i < nlogs; i++)
		fprintf(report, " log:%s %u", logs[i].key, logs[i].count);
	fprintf(report, " log_other %u encap_datagrams %u\n", nlog_other, encap_datagrams);
	for (int i = 0; i < ndevs; i++)
		if (devs[i].pcap && fclose(devs[i].pcap))
			die("close: %s", strerror(errno));
	for (int i = 0; i < nlogs; i++)
		if (logs[i].pcap && fclose(logs[i].pcap))
			die("close: %s", strerror(errno));
	fclose(report);
	return failed ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "run"))
		return cmd_run(argc, argv);
	fprintf(stderr,
		"usage: kpeer run --inject DEV --in IN.pcap [--out-dev DEV=FILE|-]... [--nflog GROUP]\n"
		"                 [--out-log PREFIX=FILE|-]... [--ttl-bump] [--encap 4|6:PORT:TYPE]...\n"
		"                 [--quiet-ms N] [--max-ms N] [--report FILE]\n");
	return 2;
}
