# map-raw
qemu-img create -f raw a.raw 1M >/dev/null
qemu-io -f raw -c 'write 256k 64k' a.raw >/dev/null
qemu-img map --output=json -f raw a.raw
