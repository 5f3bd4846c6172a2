# map-bad-output
qemu-img create -f raw a.raw 1M >/dev/null
qemu-img map --output=xml a.raw; echo rc=$?
