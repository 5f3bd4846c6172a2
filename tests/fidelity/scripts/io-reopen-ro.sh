# io-reopen-ro
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'reopen -r' -c 'write 0 512' a.qcow2; echo rc=$?
