# blkdebug-config
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
printf '[inject-error]\nevent = "read_aio"\nerrno = "5"\n' > bd.conf
qemu-io -c 'write 0 64k' -c 'read 0 512' blkdebug:bd.conf:a.qcow2; echo rc=$?
