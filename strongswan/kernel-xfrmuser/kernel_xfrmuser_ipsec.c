/*
 * charon's kernel_ipsec_t on xfrm-user: each call becomes one control request in the
 * `ip xfrm` language; expire and acquire events come back over a `monitor` connection.
 */
#include "kernel_xfrmuser_ipsec.h"
#include "kernel_xfrmuser_ctl.h"

#include <ctype.h>
#include <errno.h>
#include <glob.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <daemon.h>
#include <collections/hashtable.h>
#include <collections/linked_list.h>
#include <threading/mutex.h>
#include <threading/thread.h>
#include <utils/debug.h>

/* What get_spi asks for: the range kernel-netlink uses. */
#define SPI_MIN 0xc0000000
#define SPI_MAX 0xcfffffff

/* kernel-netlink's policy priorities, so that mixed setups order the same way. */
#define PRIO_BASE 200000

typedef struct private_kernel_xfrmuser_ipsec_t private_kernel_xfrmuser_ipsec_t;

struct private_kernel_xfrmuser_ipsec_t {
	kernel_xfrmuser_ipsec_t public;
	/* control socket from strongswan.conf; NULL: this namespace's one under /run */
	char *socket;
	/* (dir, selector) -> policy_entry_t: its uses, counted as kernel-netlink does */
	hashtable_t *policies;
	mutex_t *mutex;
	/* the monitor connection's thread and its socket */
	thread_t *monitor;
	int monitor_fd;
};

/* A (dir, selector) and its uses; the hashtable's key is `key`. */
typedef struct {
	char *key;
	linked_list_t *uses;
} policy_entry_t;

/* One add_policy of a (dir, selector): charon adds one per CHILD_SA using it. */
typedef struct {
	uint32_t priority;
	/* the words after `policy update` */
	char *words;
} policy_use_t;

/* The socket to talk to: the configured one, else the one `xfrm-user run` made for this
 * network namespace (as `xfrm-user xfrm` without --ctl finds it). */
static char *socket_path(private_kernel_xfrmuser_ipsec_t *this)
{
	struct stat st;
	char pattern[128], *path = NULL;
	glob_t g;

	if (this->socket)
	{
		return strdup(this->socket);
	}
	if (stat("/proc/self/ns/net", &st) < 0)
	{
		return NULL;
	}
	snprintf(pattern, sizeof(pattern), "/run/xfrm-user/netns-%" PRIu64 "-*.ctl",
			 (uint64_t)st.st_ino);
	if (glob(pattern, 0, NULL, &g) == 0)
	{
		if (g.gl_pathc == 1)
		{
			path = strdup(g.gl_pathv[0]);
		}
		else
		{
			DBG1(DBG_KNL, "kernel-xfrmuser: %zu sockets match %s, set "
				 "charon.plugins.kernel-xfrmuser.socket", g.gl_pathc, pattern);
		}
		globfree(&g);
	}
	else
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: no datapath socket %s (set "
			 "charon.plugins.kernel-xfrmuser.socket)", pattern);
	}
	return path;
}

/* A copy of a request for the log: the key after the algorithm name replaced. */
static char *redact(const char *cmd)
{
	char *shown = strdup(cmd), *key = shown, *end;

	while ((key = strstr(key, "' 0x")))
	{
		key += 2;
		end = key + 2;
		while (isxdigit((unsigned char)*end))
		{
			end++;
		}
		memmove(key + 5, end, strlen(end) + 1);
		memcpy(key, "(key)", 5);
		key += 5;
	}
	return shown;
}

static bool request(private_kernel_xfrmuser_ipsec_t *this, const char *opts,
					const char *cmd, char **body)
{
	char *path = socket_path(this), *shown;
	bool ok;

	if (!path)
	{
		return FALSE;
	}
	shown = redact(cmd);
	DBG2(DBG_KNL, "kernel-xfrmuser: %s", shown);
	ok = xfrmuser_ctl_request(path, opts, cmd, shown, body);
	free(shown);
	free(path);
	return ok;
}

/* A growing request text. */
typedef struct {
	char *s;
	size_t len;
	bool oom;
} words_t;

static void add(words_t *w, const char *fmt, ...)
{
	va_list args;
	char *part;
	int n;

	va_start(args, fmt);
	n = vasprintf(&part, fmt, args);
	va_end(args);
	if (n < 0)
	{
		w->oom = TRUE;
		return;
	}
	w->s = realloc(w->s, w->len + n + 1);
	memcpy(w->s + w->len, part, n + 1);
	w->len += n;
	free(part);
}

static void add_hex(words_t *w, chunk_t key)
{
	size_t i;

	add(w, " 0x");
	for (i = 0; i < key.len; i++)
	{
		add(w, "%02x", key.ptr[i]);
	}
}

static const char *proto_name(uint8_t proto)
{
	switch (proto)
	{
		case IPPROTO_ESP:
			return "esp";
		case IPPROTO_AH:
			return "ah";
		case IPPROTO_COMP:
			return "comp";
		default:
			return "?";
	}
}

static const char *mode_name(ipsec_mode_t mode)
{
	switch (mode)
	{
		case MODE_TUNNEL:
			return "tunnel";
		case MODE_TRANSPORT:
			return "transport";
		default:
			return NULL;
	}
}

/* One traffic selector as `src`/`dst` words; FALSE (logged) if the datapath's selector
 * cannot say it: port ranges other than one port or all, or a range of addresses that is
 * no prefix. */
static bool ts_words(words_t *w, const char *side, traffic_selector_t *ts,
					 uint8_t *proto, uint16_t *from, uint16_t *to)
{
	host_t *net;
	uint8_t bits;

	if (!ts->to_subnet(ts, &net, &bits))
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: traffic selector %R is no subnet: the "
			 "datapath's selectors are prefixes", ts);
		return FALSE;
	}
	add(w, " %s %H/%u", side, net, bits);
	net->destroy(net);
	*proto = ts->get_protocol(ts);
	*from = ts->get_from_port(ts);
	*to = ts->get_to_port(ts);
	return TRUE;
}

static bool port_words(words_t *w, const char *kw, uint8_t proto, uint16_t from,
					   uint16_t to)
{
	if (from == 0 && to == 0xffff)
	{
		return TRUE;
	}
	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6)
	{
		/* strongSwan carries ICMP type and code as type << 8 | code in the source port
		 * (kernel-netlink's ts2ports). */
		if (!streq(kw, "sport"))
		{
			return TRUE;
		}
		if ((from >> 8) != (to >> 8))
		{
			DBG1(DBG_KNL, "kernel-xfrmuser: a range of ICMP types is not supported");
			return FALSE;
		}
		add(w, " type %u", from >> 8);
		if (from == to)
		{
			add(w, " code %u", from & 0xff);
		}
		return TRUE;
	}
	if (from != to)
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: port range %u-%u is not supported (one "
			 "port or all)", from, to);
		return FALSE;
	}
	add(w, " %s %u", kw, from);
	return TRUE;
}

/* The selector words of (src_ts, dst_ts); its prefix and port mask lengths for the
 * priority. */
static bool selector_words(words_t *w, traffic_selector_t *src_ts,
						   traffic_selector_t *dst_ts, uint32_t *specific)
{
	uint16_t sfrom, sto, dfrom, dto;
	uint8_t proto, dproto;

	if (!ts_words(w, "src", src_ts, &proto, &sfrom, &sto) ||
		!ts_words(w, "dst", dst_ts, &dproto, &dfrom, &dto))
	{
		return FALSE;
	}
	if (proto)
	{
		add(w, " proto %u", proto);
		if (!port_words(w, "sport", proto, sfrom, sto) ||
			!port_words(w, "dport", proto, dfrom, dto))
		{
			return FALSE;
		}
	}
	if (specific)
	{
		uint8_t sbits, dbits;
		host_t *net;

		/* kernel-netlink's get_priority: longer prefixes, a protocol and exact ports
		 * come first */
		*specific = 0;
		if (src_ts->to_subnet(src_ts, &net, &sbits))
		{
			net->destroy(net);
		}
		if (dst_ts->to_subnet(dst_ts, &net, &dbits))
		{
			net->destroy(net);
		}
		*specific += (sbits + dbits) * 512;
		*specific += proto ? 256 : 0;
		*specific += (sfrom == sto ? 16 : 0) * 4 + (dfrom == dto ? 16 : 0) * 4;
	}
	return TRUE;
}

static const char *dir_name(policy_dir_t dir)
{
	switch (dir)
	{
		case POLICY_IN:
			return "in";
		case POLICY_OUT:
			return "out";
		default:
			return "fwd";
	}
}

METHOD(kernel_ipsec_t, get_features, kernel_feature_t,
	private_kernel_xfrmuser_ipsec_t *this)
{
	return KERNEL_ESP_V3_TFC;
}

METHOD(kernel_ipsec_t, get_spi, status_t,
	private_kernel_xfrmuser_ipsec_t *this, host_t *src, host_t *dst,
	uint8_t protocol, uint32_t *spi)
{
	char cmd[256], *body, *at;
	unsigned int value;
	bool ok;

	snprintf(cmd, sizeof(cmd), "state allocspi src %H dst %H proto %s min 0x%x "
			 "max 0x%x", src, dst, proto_name(protocol), SPI_MIN, SPI_MAX);
	if (!request(this, "", cmd, &body))
	{
		return FAILED;
	}
	at = strstr(body, " spi 0x");
	ok = at && sscanf(at, " spi 0x%x", &value) == 1;
	free(body);
	if (!ok)
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: allocspi replied without an SPI");
		return FAILED;
	}
	*spi = htonl(value);
	return SUCCESS;
}

METHOD(kernel_ipsec_t, get_cpi, status_t,
	private_kernel_xfrmuser_ipsec_t *this, host_t *src, host_t *dst,
	uint16_t *cpi)
{
	DBG1(DBG_KNL, "kernel-xfrmuser: IPComp is not supported by the datapath");
	return NOT_SUPPORTED;
}

/* `auth-trunc` words of an HMAC the datapath implements; FALSE if it has none. */
static bool hmac_words(words_t *w, uint16_t alg, chunk_t key)
{
	const char *name;
	int bits;

	switch (alg)
	{
		case AUTH_HMAC_SHA2_256_96:
			name = "sha256";
			bits = 96;
			break;
		case AUTH_HMAC_SHA2_256_128:
			name = "sha256";
			bits = 128;
			break;
		case AUTH_HMAC_SHA2_256_256:
			name = "sha256";
			bits = 256;
			break;
		case AUTH_HMAC_SHA2_384_192:
			name = "sha384";
			bits = 192;
			break;
		case AUTH_HMAC_SHA2_384_384:
			name = "sha384";
			bits = 384;
			break;
		case AUTH_HMAC_SHA2_512_256:
			name = "sha512";
			bits = 256;
			break;
		case AUTH_HMAC_SHA2_512_512:
			name = "sha512";
			bits = 512;
			break;
		case AUTH_HMAC_SHA1_96:
			name = "sha1";
			bits = 96;
			break;
		case AUTH_HMAC_SHA1_160:
			name = "sha1";
			bits = 160;
			break;
		default:
			return FALSE;
	}
	add(w, " auth-trunc 'hmac(%s)'", name);
	add_hex(w, key);
	add(w, " %d", bits);
	return TRUE;
}

/* The algorithm words of an SA: ESP AES-GCM (rfc4106), AES-GMAC (rfc4543),
 * ChaCha20-Poly1305 (rfc7539esp), AES-CBC, AES-CTR (rfc3686) or NULL with an HMAC; AH with
 * an HMAC. What `xfrm-user check --algorithms` lists; anything else is refused here, with
 * its name in charon's log, before the datapath is asked. */
static bool algorithm_words(words_t *w, uint8_t proto, kernel_ipsec_add_sa_t *data)
{
	const char *aead = NULL;
	int icv = 128;

	if (proto == IPPROTO_AH)
	{
		if (hmac_words(w, data->int_alg, data->int_key))
		{
			return TRUE;
		}
		DBG1(DBG_KNL, "kernel-xfrmuser: AH integrity %N is not supported by the "
			 "datapath (supported: HMAC-SHA1, HMAC-SHA2-256/384/512)",
			 integrity_algorithm_names, data->int_alg);
		return FALSE;
	}
	if (proto != IPPROTO_ESP)
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: protocol %u is not supported by the "
			 "datapath", proto);
		return FALSE;
	}
	switch (data->enc_alg)
	{
		case ENCR_AES_GCM_ICV8:
			aead = "rfc4106(gcm(aes))";
			icv = 64;
			break;
		case ENCR_AES_GCM_ICV12:
			aead = "rfc4106(gcm(aes))";
			icv = 96;
			break;
		case ENCR_AES_GCM_ICV16:
			aead = "rfc4106(gcm(aes))";
			break;
		case ENCR_NULL_AUTH_AES_GMAC:
			aead = "rfc4543(gcm(aes))";
			break;
		case ENCR_CHACHA20_POLY1305:
			aead = "rfc7539esp(chacha20,poly1305)";
			break;
		case ENCR_AES_CBC:
		case ENCR_AES_CTR:
		case ENCR_NULL:
			break;
		default:
			DBG1(DBG_KNL, "kernel-xfrmuser: ESP encryption %N is not supported by "
				 "the datapath (supported: AES-GCM, AES-GMAC, ChaCha20-Poly1305, "
				 "AES-CBC, AES-CTR, NULL)", encryption_algorithm_names,
				 data->enc_alg);
			return FALSE;
	}
	if (aead)
	{
		if (data->int_alg != AUTH_UNDEFINED)
		{
			DBG1(DBG_KNL, "kernel-xfrmuser: %N takes no separate integrity "
				 "algorithm (got %N)", encryption_algorithm_names, data->enc_alg,
				 integrity_algorithm_names, data->int_alg);
			return FALSE;
		}
		/* charon passes the key followed by the 4-byte salt, as the RFCs want; the
		 * datapath checks the lengths */
		add(w, " aead '%s'", aead);
		add_hex(w, data->enc_key);
		add(w, " %d", icv);
		return TRUE;
	}
	/* AES-CTR's key from charon is the AES key followed by the 4-byte nonce, as
	 * rfc3686(ctr(aes)) takes it */
	add(w, " enc '%s'", data->enc_alg == ENCR_NULL ? "ecb(cipher_null)" :
		data->enc_alg == ENCR_AES_CTR ? "rfc3686(ctr(aes))" : "cbc(aes)");
	if (data->enc_key.len)
	{
		add_hex(w, data->enc_key);
	}
	else
	{
		add(w, " ''");
	}
	if (!hmac_words(w, data->int_alg, data->int_key))
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: ESP integrity %N is not supported by the "
			 "datapath (supported: HMAC-SHA1, HMAC-SHA2-256/384/512)",
			 integrity_algorithm_names, data->int_alg);
		return FALSE;
	}
	return TRUE;
}

static void limit_words(words_t *w, lifetime_cfg_t *lt)
{
	if (!lt)
	{
		return;
	}
	if (lt->time.rekey)
	{
		add(w, " limit time-soft %" PRIu64, lt->time.rekey);
	}
	if (lt->time.life)
	{
		add(w, " limit time-hard %" PRIu64, lt->time.life);
	}
	if (lt->bytes.rekey)
	{
		add(w, " limit byte-soft %" PRIu64, lt->bytes.rekey);
	}
	if (lt->bytes.life)
	{
		add(w, " limit byte-hard %" PRIu64, lt->bytes.life);
	}
	if (lt->packets.rekey)
	{
		add(w, " limit packet-soft %" PRIu64, lt->packets.rekey);
	}
	if (lt->packets.life)
	{
		add(w, " limit packet-hard %" PRIu64, lt->packets.life);
	}
}

METHOD(kernel_ipsec_t, add_sa, status_t,
	private_kernel_xfrmuser_ipsec_t *this, kernel_ipsec_sa_id_t *id,
	kernel_ipsec_add_sa_t *data)
{
	const char *mode = mode_name(data->mode);
	words_t w = {};
	status_t status = FAILED;

	if (!mode)
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: mode %N is not supported by the datapath "
			 "(tunnel, transport)", ipsec_mode_names, data->mode);
		return FAILED;
	}
	if (data->ipcomp != IPCOMP_NONE || id->mark.value || id->if_id ||
		data->mark.value || data->label)
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: IPComp, marks, interface IDs and security "
			 "labels are not supported by the datapath");
		return FAILED;
	}
	add(&w, "state add src %H dst %H proto %s spi 0x%08x reqid %u mode %s",
		id->src, id->dst, proto_name(id->proto), ntohl(id->spi), data->reqid,
		mode);
	if (data->replay_window)
	{
		add(&w, " replay-window %u", data->replay_window);
	}
	if (data->esn || !data->copy_ecn || !data->copy_df ||
		data->copy_dscp == DSCP_COPY_YES || data->copy_dscp == DSCP_COPY_IN_ONLY)
	{
		add(&w, " flag");
		if (data->esn)
		{
			add(&w, " esn");
		}
		if (!data->copy_ecn)
		{
			add(&w, " noecn");
		}
		if (!data->copy_df)
		{
			add(&w, " nopmtudisc");
		}
		if (data->copy_dscp == DSCP_COPY_YES ||
			data->copy_dscp == DSCP_COPY_IN_ONLY)
		{
			add(&w, " decap-dscp");
		}
	}
	if (data->copy_dscp == DSCP_COPY_IN_ONLY || data->copy_dscp == DSCP_COPY_NO)
	{
		add(&w, " extra-flag dont-encap-dscp");
	}
	if (!algorithm_words(&w, id->proto, data))
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: SA with SPI %.8x refused", ntohl(id->spi));
		goto out;
	}
	if (data->encap)
	{
		add(&w, " encap espinudp %u %u 0.0.0.0", id->src->get_port(id->src),
			id->dst->get_port(id->dst));
	}
	if (data->tfc && id->proto == IPPROTO_ESP && data->mode == MODE_TUNNEL)
	{
		add(&w, " tfcpad %u", data->tfc);
	}
	if (data->mode == MODE_TRANSPORT &&
		data->src_ts->get_count(data->src_ts) == 1 &&
		data->dst_ts->get_count(data->dst_ts) == 1)
	{
		traffic_selector_t *src_ts, *dst_ts;

		/* the kernel's transport-mode SA selector, as kernel-netlink sets it */
		data->src_ts->get_first(data->src_ts, (void**)&src_ts);
		data->dst_ts->get_first(data->dst_ts, (void**)&dst_ts);
		add(&w, " sel");
		if (!selector_words(&w, src_ts, dst_ts, NULL))
		{
			goto out;
		}
	}
	limit_words(&w, data->lifetime);
	if (w.oom)
	{
		goto out;
	}
	if (request(this, "", w.s, NULL))
	{
		status = SUCCESS;
	}
out:
	if (w.s)
	{
		memwipe(w.s, w.len);
	}
	free(w.s);
	return status;
}

METHOD(kernel_ipsec_t, update_sa, status_t,
	private_kernel_xfrmuser_ipsec_t *this, kernel_ipsec_sa_id_t *id,
	kernel_ipsec_update_sa_t *data)
{
	/* charon then re-establishes the CHILD_SA (MOBIKE and NAT mapping changes) */
	return NOT_SUPPORTED;
}

/* A second count from the daemon (wall clock) as charon's monotonic time. */
static time_t monotonic_of(uint64_t wall)
{
	time_t now;

	if (!wall)
	{
		return 0;
	}
	now = time(NULL);
	return time_monotonic(NULL) - (now - (time_t)wall);
}

METHOD(kernel_ipsec_t, query_sa, status_t,
	private_kernel_xfrmuser_ipsec_t *this, kernel_ipsec_sa_id_t *id,
	kernel_ipsec_query_sa_t *data, uint64_t *bytes, uint64_t *packets,
	time_t *use_time)
{
	char cmd[256], *body, *at;
	unsigned long long b, p, add_t, use_t = 0;
	char use[32];
	bool ok;

	snprintf(cmd, sizeof(cmd), "state get dst %H proto %s spi 0x%08x src %H",
			 id->dst, proto_name(id->proto), ntohl(id->spi), id->src);
	if (!request(this, " -s", cmd, &body))
	{
		return NOT_FOUND;
	}
	at = strstr(body, "lifetime current:\n");
	ok = at && sscanf(at, "lifetime current:\n %llu(bytes), %llu(packets)\n add "
					  "%llu use %31s", &b, &p, &add_t, use) == 4;
	free(body);
	if (!ok)
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: state get replied without counters");
		return FAILED;
	}
	if (!streq(use, "-"))
	{
		use_t = strtoull(use, NULL, 10);
	}
	if (bytes)
	{
		*bytes = b;
	}
	if (packets)
	{
		*packets = p;
	}
	if (use_time)
	{
		*use_time = monotonic_of(use_t);
	}
	return SUCCESS;
}

METHOD(kernel_ipsec_t, del_sa, status_t,
	private_kernel_xfrmuser_ipsec_t *this, kernel_ipsec_sa_id_t *id,
	kernel_ipsec_del_sa_t *data)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "state delete dst %H proto %s spi 0x%08x src %H",
			 id->dst, proto_name(id->proto), ntohl(id->spi), id->src);
	return request(this, "", cmd, NULL) ? SUCCESS : NOT_FOUND;
}

METHOD(kernel_ipsec_t, flush_sas, status_t,
	private_kernel_xfrmuser_ipsec_t *this)
{
	return request(this, "", "state flush", NULL) ? SUCCESS : FAILED;
}

/* The key (dir and selector words) and the policy's words after `policy update`. */
static bool policy_words(kernel_ipsec_policy_id_t *id,
						 kernel_ipsec_manage_policy_t *data, char **key,
						 policy_use_t *use)
{
	words_t k = {}, w = {};
	uint32_t specific, priority;
	ipsec_sa_cfg_t *sa = data->sa;

	if (id->mark.value || id->if_id || id->interface || id->label)
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: policies with marks, interface IDs, "
			 "interfaces or security labels are not supported by the datapath");
		return FALSE;
	}
	add(&k, "dir %s", dir_name(id->dir));
	if (!selector_words(&k, id->src_ts, id->dst_ts, &specific))
	{
		free(k.s);
		return FALSE;
	}
	priority = PRIO_BASE;
	switch (data->prio)
	{
		case POLICY_PRIORITY_FALLBACK:
			priority += PRIO_BASE;
			/* fall-through */
		case POLICY_PRIORITY_ROUTED:
		case POLICY_PRIORITY_DEFAULT:
			priority += PRIO_BASE;
			/* fall-through */
		case POLICY_PRIORITY_PASS:
			break;
	}
	priority -= specific;
	priority -= (data->prio != POLICY_PRIORITY_ROUTED);
	if (data->manual_prio)
	{
		priority = data->manual_prio;
	}
	add(&w, "%s priority %u", k.s, priority);
	switch (data->type)
	{
		case POLICY_DROP:
			add(&w, " action block");
			break;
		case POLICY_PASS:
			add(&w, " action allow");
			break;
		case POLICY_IPSEC:
		{
			const char *mode = mode_name(sa->mode);

			if (!mode || sa->ipcomp.transform != IPCOMP_NONE)
			{
				DBG1(DBG_KNL, "kernel-xfrmuser: policy with mode %N%s is not "
					 "supported by the datapath", ipsec_mode_names, sa->mode,
					 sa->ipcomp.transform != IPCOMP_NONE ? " and IPComp" : "");
				free(k.s);
				free(w.s);
				return FALSE;
			}
			add(&w, " action allow");
			/* inner to outer, as the kernel applies a bundle */
			if (sa->esp.use)
			{
				add(&w, " tmpl src %H dst %H proto esp reqid %u mode %s",
					data->src, data->dst, sa->reqid, mode);
			}
			if (sa->ah.use)
			{
				add(&w, " tmpl src %H dst %H proto ah reqid %u mode %s",
					data->src, data->dst, sa->reqid,
					sa->esp.use ? "transport" : mode);
			}
			break;
		}
	}
	if (k.oom || w.oom)
	{
		free(k.s);
		free(w.s);
		return FALSE;
	}
	*key = k.s;
	use->priority = priority;
	use->words = w.s;
	return TRUE;
}

/* The use that is installed: the lowest priority value, the first added among equals. */
static policy_use_t *best_use(linked_list_t *uses)
{
	enumerator_t *e = uses->create_enumerator(uses);
	policy_use_t *u, *best = NULL;

	while (e->enumerate(e, &u))
	{
		if (!best || u->priority < best->priority)
		{
			best = u;
		}
	}
	e->destroy(e);
	return best;
}

static bool install(private_kernel_xfrmuser_ipsec_t *this, policy_use_t *use)
{
	char *cmd;
	bool ok;

	if (asprintf(&cmd, "policy update %s", use->words) < 0)
	{
		return FALSE;
	}
	ok = request(this, "", cmd, NULL);
	free(cmd);
	return ok;
}

static void use_destroy(policy_use_t *use)
{
	free(use->words);
	free(use);
}

static void entry_destroy(policy_entry_t *entry)
{
	entry->uses->destroy_function(entry->uses, (void*)use_destroy);
	free(entry->key);
	free(entry);
}

METHOD(kernel_ipsec_t, add_policy, status_t,
	private_kernel_xfrmuser_ipsec_t *this, kernel_ipsec_policy_id_t *id,
	kernel_ipsec_manage_policy_t *data)
{
	policy_use_t *use, *before;
	policy_entry_t *entry;
	linked_list_t *uses;
	status_t status = SUCCESS;
	char *key;

	INIT(use);
	if (!policy_words(id, data, &key, use))
	{
		free(use);
		return FAILED;
	}
	this->mutex->lock(this->mutex);
	entry = this->policies->get(this->policies, key);
	if (!entry)
	{
		INIT(entry,
			.key = strdup(key),
			.uses = linked_list_create(),
		);
		this->policies->put(this->policies, entry->key, entry);
	}
	uses = entry->uses;
	before = best_use(uses);
	uses->insert_last(uses, use);
	if (best_use(uses) != before)
	{
		if (!install(this, use))
		{
			uses->remove(uses, use, NULL);
			use_destroy(use);
			status = FAILED;
		}
	}
	if (uses->get_count(uses) == 0)
	{
		this->policies->remove(this->policies, key);
		entry_destroy(entry);
	}
	this->mutex->unlock(this->mutex);
	free(key);
	return status;
}

METHOD(kernel_ipsec_t, query_policy, status_t,
	private_kernel_xfrmuser_ipsec_t *this, kernel_ipsec_policy_id_t *id,
	kernel_ipsec_query_policy_t *data, time_t *use_time)
{
	words_t w = {};
	char *cmd, *body;
	bool ok;

	add(&w, "dir %s", dir_name(id->dir));
	if (!selector_words(&w, id->src_ts, id->dst_ts, NULL) || w.oom)
	{
		free(w.s);
		return FAILED;
	}
	ok = asprintf(&cmd, "policy get %s", w.s) >= 0;
	free(w.s);
	if (!ok)
	{
		return FAILED;
	}
	ok = request(this, "", cmd, &body);
	free(cmd);
	if (!ok)
	{
		return NOT_FOUND;
	}
	free(body);
	/* the datapath keeps no per-policy use time; the SAs' (query_sa) is exact */
	*use_time = 0;
	return SUCCESS;
}

METHOD(kernel_ipsec_t, del_policy, status_t,
	private_kernel_xfrmuser_ipsec_t *this, kernel_ipsec_policy_id_t *id,
	kernel_ipsec_manage_policy_t *data)
{
	policy_use_t want, *u, *found = NULL, *best;
	policy_entry_t *entry;
	linked_list_t *uses;
	enumerator_t *e;
	status_t status = SUCCESS;
	char *key;

	if (!policy_words(id, data, &key, &want))
	{
		return FAILED;
	}
	this->mutex->lock(this->mutex);
	entry = this->policies->get(this->policies, key);
	if (!entry)
	{
		this->mutex->unlock(this->mutex);
		DBG1(DBG_KNL, "kernel-xfrmuser: deleting unknown policy %s", key);
		free(key);
		free(want.words);
		return NOT_FOUND;
	}
	uses = entry->uses;
	best = best_use(uses);
	e = uses->create_enumerator(uses);
	while (e->enumerate(e, &u))
	{
		if (streq(u->words, want.words))
		{
			uses->remove_at(uses, e);
			found = u;
			break;
		}
	}
	e->destroy(e);
	if (!found)
	{
		/* the same selector, but other SAs: drop one use as kernel-netlink does when
		 * the details changed in between (e.g. a rekey with a new reqid) */
		if (uses->remove_last(uses, (void**)&found) != SUCCESS)
		{
			found = NULL;
		}
	}
	if (uses->get_count(uses) == 0)
	{
		char *cmd;

		this->policies->remove(this->policies, key);
		entry_destroy(entry);
		if (asprintf(&cmd, "policy delete %s", key) >= 0)
		{
			if (!request(this, "", cmd, NULL))
			{
				status = NOT_FOUND;
			}
			free(cmd);
		}
	}
	else if (found == best)
	{
		/* the installed one went: the next one in line takes over */
		if (!install(this, best_use(uses)))
		{
			status = FAILED;
		}
	}
	this->mutex->unlock(this->mutex);
	if (found)
	{
		use_destroy(found);
	}
	free(key);
	free(want.words);
	return status;
}

static void clear_policies(private_kernel_xfrmuser_ipsec_t *this)
{
	policy_entry_t *entry;
	enumerator_t *e;
	char *key;

	e = this->policies->create_enumerator(this->policies);
	while (e->enumerate(e, &key, &entry))
	{
		this->policies->remove_at(this->policies, e);
		entry_destroy(entry);
	}
	e->destroy(e);
}

METHOD(kernel_ipsec_t, flush_policies, status_t,
	private_kernel_xfrmuser_ipsec_t *this)
{
	bool ok;

	this->mutex->lock(this->mutex);
	ok = request(this, "", "policy flush", NULL);
	if (ok)
	{
		clear_policies(this);
	}
	this->mutex->unlock(this->mutex);
	return ok ? SUCCESS : FAILED;
}

METHOD(kernel_ipsec_t, bypass_socket, bool,
	private_kernel_xfrmuser_ipsec_t *this, int fd, int family)
{
	/* The datapath never protects IKE: its classifiers pass UDP 500/4500 of the host's
	 * own sockets, as socket policies of kernel-netlink would. */
	return TRUE;
}

METHOD(kernel_ipsec_t, enable_udp_decap, bool,
	private_kernel_xfrmuser_ipsec_t *this, int fd, int family, uint16_t port)
{
	/* ESP in UDP is taken off the wire by the datapath's outside program before the
	 * socket sees it; the socket gets IKE (non-ESP marker) and keepalives only. */
	return TRUE;
}

/* An `Expired src A dst B\n\tproto P spi 0xS …\thard H` event. */
static void handle_expire(const char *ev)
{
	char src[64], dst[64], proto[8];
	unsigned int spi;
	const char *at = strstr(ev, "\n\tproto ");
	host_t *host;
	bool hard;

	if (sscanf(ev, "Expired src %63s dst %63s", src, dst) != 2 || !at ||
		sscanf(at, "\n\tproto %7s spi 0x%x", proto, &spi) != 2)
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: unreadable expire event: %s", ev);
		return;
	}
	host = host_create_from_string(dst, 0);
	if (!host)
	{
		return;
	}
	hard = strstr(ev, "\thard 1") != NULL;
	DBG1(DBG_KNL, "kernel-xfrmuser: %s expire for %s SA %.8x to %H",
		 hard ? "hard" : "soft", proto, spi, host);
	charon->kernel->expire(charon->kernel,
						   streq(proto, "ah") ? IPPROTO_AH : IPPROTO_ESP,
						   htonl(spi), host, hard);
	host->destroy(host);
}

static traffic_selector_t *flow_ts(const char *addr, unsigned proto, unsigned port)
{
	host_t *host = host_create_from_string((char*)addr, 0);

	if (!host)
	{
		return NULL;
	}
	return traffic_selector_create_from_subnet(host,
						host->get_family(host) == AF_INET ? 32 : 128, proto,
						port ?: 0, port ?: 0xffff);
}

/* An `acquire proto P\n\tsel src A dst B proto N sport S dport D\n\tpolicy …` event:
 * the policy's template holds the reqid charon knows the CHILD_SA by. */
static void handle_acquire(const char *ev)
{
	char src[64], dst[64];
	unsigned int proto, sport, dport, reqid;
	const char *sel = strstr(ev, "\n\tsel "), *tmpl = strstr(ev, "\ttmpl ");
	const char *r = tmpl ? strstr(tmpl, " reqid ") : NULL;
	kernel_acquire_data_t data = {};

	if (!sel || !r ||
		sscanf(sel, "\n\tsel src %63s dst %63s proto %u sport %u dport %u", src,
			   dst, &proto, &sport, &dport) != 5 ||
		sscanf(r, " reqid %u", &reqid) != 1)
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: unreadable acquire event: %s", ev);
		return;
	}
	data.src = flow_ts(src, proto, sport);
	data.dst = flow_ts(dst, proto, dport);
	DBG1(DBG_KNL, "kernel-xfrmuser: acquire for reqid %u (%R === %R)", reqid,
		 data.src, data.dst);
	charon->kernel->acquire(charon->kernel, reqid, &data);
	DESTROY_IF(data.src);
	DESTROY_IF(data.dst);
}

/* The monitor thread: (re)connects, subscribes, and turns events into charon's. The
 * datapath may start after charon or restart under it: a lost connection is retried every
 * second. */
static void *monitor(private_kernel_xfrmuser_ipsec_t *this)
{
	char *buf = malloc(65537);
	bool said = FALSE;

	while (TRUE)
	{
		char *path;
		ssize_t n;
		bool old;
		int fd;

		path = socket_path(this);
		fd = path ? xfrmuser_ctl_connect(path) : -1;
		if (fd >= 0 && send(fd, "xfrmctl 1\nmonitor", 17, 0) == 17)
		{
			old = thread_cancelability(TRUE);
			n = recv(fd, buf, 65536, 0);
			thread_cancelability(old);
			if (n >= 3 && strncmp(buf, "ok\n", 3) == 0)
			{
				DBG1(DBG_KNL, "kernel-xfrmuser: receiving events from %s", path);
				said = FALSE;
				this->monitor_fd = fd;
				while (TRUE)
				{
					old = thread_cancelability(TRUE);
					n = recv(fd, buf, 65536, 0);
					thread_cancelability(old);
					if (n <= 0)
					{
						break;
					}
					buf[n] = '\0';
					if (strncmp(buf, "event\n", 6) != 0)
					{
						continue;
					}
					if (strncmp(buf + 6, "Expired ", 8) == 0)
					{
						handle_expire(buf + 6);
					}
					else if (strncmp(buf + 6, "acquire ", 8) == 0)
					{
						handle_acquire(buf + 6);
					}
					else if (strncmp(buf + 6, "Lost ", 5) == 0)
					{
						DBG1(DBG_KNL, "kernel-xfrmuser: the datapath dropped events: "
							 "%s", buf + 6);
					}
				}
				this->monitor_fd = -1;
				DBG1(DBG_KNL, "kernel-xfrmuser: event connection to %s lost, "
					 "reconnecting", path);
			}
		}
		else if (!said)
		{
			DBG1(DBG_KNL, "kernel-xfrmuser: datapath socket %s not reachable yet "
				 "(%s), retrying every second", path ?: "(none)", strerror(errno));
			said = TRUE;
		}
		if (fd >= 0)
		{
			close(fd);
		}
		free(path);
		old = thread_cancelability(TRUE);
		sleep(1);
		thread_cancelability(old);
	}
	free(buf);
	return NULL;
}

METHOD(kernel_ipsec_t, destroy, void,
	private_kernel_xfrmuser_ipsec_t *this)
{
	if (this->monitor)
	{
		this->monitor->cancel(this->monitor);
		this->monitor->join(this->monitor);
	}
	if (this->monitor_fd >= 0)
	{
		close(this->monitor_fd);
	}
	clear_policies(this);
	this->policies->destroy(this->policies);
	this->mutex->destroy(this->mutex);
	free(this->socket);
	free(this);
}

kernel_xfrmuser_ipsec_t *kernel_xfrmuser_ipsec_create()
{
	private_kernel_xfrmuser_ipsec_t *this;
	char *socket;

	INIT(this,
		.public = {
			.interface = {
				.get_features = _get_features,
				.get_spi = _get_spi,
				.get_cpi = _get_cpi,
				.add_sa = _add_sa,
				.update_sa = _update_sa,
				.query_sa = _query_sa,
				.del_sa = _del_sa,
				.flush_sas = _flush_sas,
				.add_policy = _add_policy,
				.query_policy = _query_policy,
				.del_policy = _del_policy,
				.flush_policies = _flush_policies,
				.bypass_socket = _bypass_socket,
				.enable_udp_decap = _enable_udp_decap,
				.destroy = _destroy,
			},
		},
		.policies = hashtable_create(hashtable_hash_str, hashtable_equals_str, 32),
		.mutex = mutex_create(MUTEX_TYPE_DEFAULT),
		.monitor_fd = -1,
	);
	socket = lib->settings->get_str(lib->settings,
							"%s.plugins.kernel-xfrmuser.socket", NULL, lib->ns);
	this->socket = socket ? strdup(socket) : NULL;
	/* the datapath need not be up yet: the thread keeps trying */
	this->monitor = thread_create((thread_main_t)monitor, this);
	if (!this->monitor)
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: cannot start the event thread");
		destroy(this);
		return NULL;
	}
	return &this->public;
}
