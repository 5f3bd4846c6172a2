# snapshot-raw
qemu-img create -f raw a.raw 1M >/dev/null
qemu-img snapshot -c s1 a.raw; echo rc=$?
