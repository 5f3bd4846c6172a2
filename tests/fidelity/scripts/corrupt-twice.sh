# corrupt-twice
qemu-img create -f qcow2 c.qcow2 1M >/dev/null
qemu-io -c 'write 0 64k' c.qcow2 >/dev/null
printf '\x80\x00\x00\x00\x00\x01\x02\x00' | dd of=c.qcow2 bs=1 seek=$((0x30000)) conv=notrunc 2>/dev/null
qemu-io -c 'read 0 512' -c 'read 0 512' c.qcow2; echo rc=$?
