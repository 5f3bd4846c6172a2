# blkdebug-plain
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'read 0 512' blkdebug::a.qcow2 | sed 's/(.*)/X/'
