# convert-S0
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img convert -S 0 -O raw a.qcow2 b.raw
qemu-img map --output=json -f raw b.raw
