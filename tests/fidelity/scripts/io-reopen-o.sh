# io-reopen-o
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'reopen -o lazy-refcounts=on' -c 'write 0 512' a.qcow2 | sed 's/(.*)/X/'
