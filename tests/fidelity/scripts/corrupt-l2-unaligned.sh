# corrupt-l2-unaligned
qemu-img create -f qcow2 c.qcow2 1M >/dev/null
qemu-io -c 'write 0 64k' c.qcow2 >/dev/null
printf '\x80\x00\x00\x00\x00\x01\x02\x00' | dd of=c.qcow2 bs=1 seek=$((0x30000)) conv=notrunc 2>/dev/null
cp c.qcow2 ro.qcow2
qemu-io -c 'read 0 512' c.qcow2; echo rc=$?
qemu-img info c.qcow2 | grep corrupt
qemu-io -r -c 'read 0 512' -c 'read 0 512' ro.qcow2; echo rc=$?
