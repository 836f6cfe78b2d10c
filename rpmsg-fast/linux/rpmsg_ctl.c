// SPDX-License-Identifier: GPL-2.0
/*
 * rpmsg_ctl: the two rpmsg_ctrl ioctls .ci/rpmsg-linux needs inside the guest, where
 * busybox has no ioctl tool.
 *
 *   rpmsg_ctl create-dev CTRL NAME SRC   RPMSG_CREATE_DEV_IOCTL: a local channel NAME
 *                                        at address SRC; once a driver binds it
 *                                        (rpmsg_char for "rpmsg-raw"), Linux announces
 *                                        it to the remote (NS create)
 *   rpmsg_ctl release-dev CTRL NAME SRC  RPMSG_RELEASE_DEV_IOCTL: removes it (NS destroy)
 *
 * CTRL is /dev/rpmsg_ctrlN; SRC is decimal or 0x-hex. Exit 0 on success, 1 with the
 * errno message otherwise, 2 on bad arguments.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/rpmsg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct rpmsg_endpoint_info info;
	unsigned long cmd;
	char *end;
	int fd;

	if (argc != 5 || strlen(argv[3]) >= sizeof(info.name)) {
		fprintf(stderr, "usage: rpmsg_ctl create-dev|release-dev CTRL NAME SRC\n");
		return 2;
	}
	if (!strcmp(argv[1], "create-dev"))
		cmd = RPMSG_CREATE_DEV_IOCTL;
	else if (!strcmp(argv[1], "release-dev"))
		cmd = RPMSG_RELEASE_DEV_IOCTL;
	else
		return 2;
	memset(&info, 0, sizeof(info));
	strcpy(info.name, argv[3]);
	info.src = strtoul(argv[4], &end, 0);
	if (*end)
		return 2;
	info.dst = 0xffffffff; /* RPMSG_ADDR_ANY */
	fd = open(argv[2], O_RDWR);
	if (fd < 0 || ioctl(fd, cmd, &info) < 0) {
		fprintf(stderr, "rpmsg_ctl %s %s: %s\n", argv[1], argv[2], strerror(errno));
		return 1;
	}
	close(fd);
	return 0;
}
