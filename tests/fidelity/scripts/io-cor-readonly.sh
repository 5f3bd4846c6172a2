# io-cor-readonly
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -C -r -c 'read 0 512' a.qcow2; echo rc=$?
