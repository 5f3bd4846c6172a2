# commit-d
qemu-img create -f qcow2 base.qcow2 1M >/dev/null
qemu-img create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 >/dev/null
qemu-io -c 'write -P 4 0 64k' top.qcow2 >/dev/null
qemu-img commit -d top.qcow2
qemu-img map --output=json top.qcow2
