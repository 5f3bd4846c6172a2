# convert-bad-S
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img convert -S 100 -O raw a.qcow2 b.raw; echo rc=$?
