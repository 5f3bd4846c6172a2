# convert-with-backing
qemu-img create -f qcow2 base.qcow2 1M >/dev/null
qemu-io -c 'write -P 1 0 64k' base.qcow2 >/dev/null
qemu-img create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 >/dev/null
qemu-io -c 'write -P 2 64k 64k' top.qcow2 >/dev/null
qemu-img convert -O qcow2 -B base.qcow2 -F qcow2 top.qcow2 new.qcow2
qemu-img map --output=json new.qcow2
