# check-corrupt-l1
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'write 0 64k' a.qcow2 >/dev/null
printf '\x80\x00\x00\x00\x00\x01\x00\x01' | dd of=a.qcow2 bs=1 seek=$((0x30000)) conv=notrunc 2>/dev/null
qemu-io -c 'read 0 512' a.qcow2; echo rc=$?
