# check-raw
qemu-img create -f raw a.raw 1M >/dev/null
qemu-img check -f raw a.raw; echo rc=$?
