# resize-shrink
qemu-img create -f qcow2 a.qcow2 2M >/dev/null
qemu-img resize --shrink a.qcow2 1M; echo rc=$?
qemu-img info a.qcow2 | grep 'virtual size'
