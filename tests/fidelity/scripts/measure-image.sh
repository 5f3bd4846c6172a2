# measure-image
qemu-img create -f raw a.raw 4M >/dev/null
qemu-io -f raw -c 'write 0 1M' a.raw >/dev/null
qemu-img measure -f raw -O qcow2 a.raw
