# io-readonly-write
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -r -c 'write 0 512' a.qcow2; echo rc=$?
