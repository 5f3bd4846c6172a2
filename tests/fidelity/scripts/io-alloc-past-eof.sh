# io-alloc-past-eof
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'alloc 960k 128k' a.qcow2
