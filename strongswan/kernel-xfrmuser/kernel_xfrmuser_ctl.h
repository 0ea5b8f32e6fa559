/*
 * A client of xfrm-user's control socket: one SOCK_SEQPACKET connection per request, so a
 * restarted daemon is simply found again at the next call.
 */
#ifndef KERNEL_XFRMUSER_CTL_H_
#define KERNEL_XFRMUSER_CTL_H_

#include <library.h>

/**
 * Connect to the control socket at path; -1 (and errno) on failure.
 */
int xfrmuser_ctl_connect(const char *path);

/**
 * Send one request ("xfrmctl 1<opts>\n<cmd>") and collect the reply's body.
 *
 * @param path		control socket
 * @param opts		output options after the version ("", " -s")
 * @param cmd		the words after `ip xfrm`
 * @param shown		the same for the log (no key in it)
 * @param body		the body of an `ok` reply (allocated, caller frees), or NULL
 * @return			TRUE on `ok`; FALSE on `error …` (logged) or a broken connection
 */
bool xfrmuser_ctl_request(const char *path, const char *opts, const char *cmd,
						  const char *shown, char **body);

#endif
