# io-alloc
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'write 0 64k' -c 'alloc 0 128k' -c 'alloc 64k 64k' a.qcow2 | sed 's/(.*)/X/'
