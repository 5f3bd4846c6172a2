# resize-bad
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img resize a.qcow2 abc; echo rc=$?
