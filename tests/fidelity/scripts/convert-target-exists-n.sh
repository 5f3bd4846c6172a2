# convert-target-exists-n
qemu-img create -f raw a.raw 1M >/dev/null
qemu-img create -f raw b.raw 1M >/dev/null
qemu-io -f raw -c 'write -P 3 0 4k' a.raw >/dev/null
qemu-img convert -n -f raw -O raw a.raw b.raw; echo rc=$?
cmp a.raw b.raw && echo same
