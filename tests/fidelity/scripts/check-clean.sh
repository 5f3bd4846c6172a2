# check-clean
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'write 0 64k' a.qcow2 >/dev/null
qemu-img check a.qcow2; echo rc=$?
