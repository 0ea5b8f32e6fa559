/*
 * The request/reply exchange of the control protocol (docs/control-protocol.md).
 */
#include "kernel_xfrmuser_ctl.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <utils/debug.h>

/* The daemon splits long bodies into datagrams of at most 32 KiB. */
#define REPLY_MAX 65536

int xfrmuser_ctl_connect(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(addr.sun_path))
	{
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(addr.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
	{
		return -1;
	}
	if (connect(fd, (struct sockaddr*)&addr, sizeof(addr)) < 0)
	{
		int err = errno;

		close(fd);
		errno = err;
		return -1;
	}
	return fd;
}

bool xfrmuser_ctl_request(const char *path, const char *opts, const char *cmd,
						  const char *shown, char **body)
{
	char *req, *buf, *acc = NULL;
	size_t len = 0;
	bool ok = FALSE;
	ssize_t n;
	int fd;

	if (body)
	{
		*body = NULL;
	}
	fd = xfrmuser_ctl_connect(path);
	if (fd < 0)
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: cannot reach the datapath at %s: %s "
			 "(is `xfrm-user run` up?); request was: %s", path, strerror(errno),
			 shown);
		return FALSE;
	}
	if (asprintf(&req, "xfrmctl 1%s\n%s", opts, cmd) < 0)
	{
		close(fd);
		return FALSE;
	}
	n = send(fd, req, strlen(req), 0);
	memwipe(req, strlen(req));
	free(req);
	if (n < 0)
	{
		DBG1(DBG_KNL, "kernel-xfrmuser: send to %s failed: %s", path,
			 strerror(errno));
		close(fd);
		return FALSE;
	}
	buf = malloc(REPLY_MAX + 1);
	while (TRUE)
	{
		n = recv(fd, buf, REPLY_MAX, 0);
		if (n <= 0)
		{
			DBG1(DBG_KNL, "kernel-xfrmuser: %s closed before replying to: %s",
				 path, shown);
			break;
		}
		buf[n] = '\0';
		if (strncmp(buf, "more\n", 5) == 0 || strncmp(buf, "ok\n", 3) == 0)
		{
			char *part = buf + (buf[0] == 'm' ? 5 : 3);
			size_t plen = strlen(part);

			acc = realloc(acc, len + plen + 1);
			memcpy(acc + len, part, plen + 1);
			len += plen;
			if (buf[0] == 'o')
			{
				ok = TRUE;
				break;
			}
			continue;
		}
		/* "error <message>\n" */
		DBG1(DBG_KNL, "kernel-xfrmuser: the datapath refused `%s`: %.*s", shown,
			 (int)strcspn(buf, "\n"), buf);
		break;
	}
	free(buf);
	close(fd);
	if (ok && body)
	{
		*body = acc ?: strdup("");
	}
	else
	{
		free(acc);
	}
	return ok;
}
