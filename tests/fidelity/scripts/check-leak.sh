# check-leak
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'write 0 64k' a.qcow2 >/dev/null
printf '\x00\x00\x00\x00\x00\x00\x00\x00' | dd of=a.qcow2 bs=1 seek=$((0x50000)) conv=notrunc 2>/dev/null
qemu-img check a.qcow2; echo rc=$?
