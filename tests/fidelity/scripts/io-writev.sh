# io-writev
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'writev -P 5 0 4k 4k' -c 'readv -P 5 0 4k 4k' a.qcow2 | sed 's/(.*)/X/'
