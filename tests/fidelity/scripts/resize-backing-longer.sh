# resize-backing-longer
qemu-img create -f qcow2 base.qcow2 2M >/dev/null
qemu-io -c 'write -P 1 0 2M' base.qcow2 >/dev/null
qemu-img create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 1M >/dev/null
qemu-img resize top.qcow2 2M
qemu-io -c 'read -P 0 1M 1M' top.qcow2 | sed 's/(.*)/X/'

qemu-img map --output=json top.qcow2
