# info-wrong-fmt
qemu-img create -f raw a.raw 1M >/dev/null
qemu-img info -f qcow2 a.raw; echo rc=$?
