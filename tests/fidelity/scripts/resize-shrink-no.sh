# resize-shrink-no
qemu-img create -f qcow2 a.qcow2 2M >/dev/null
qemu-img resize a.qcow2 1M; echo rc=$?
