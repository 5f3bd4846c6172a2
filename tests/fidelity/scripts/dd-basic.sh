# dd-basic
qemu-img create -f raw a.raw 1M >/dev/null
qemu-io -f raw -c 'write -P 6 0 64k' a.raw >/dev/null
qemu-img dd -f raw -O raw if=a.raw of=b.raw bs=64k count=1
stat -c %s b.raw
