# resize-backing-longer-v2
qemu-img create -q -f qcow2 b2.qcow2 2M; qemu-io -c 'write -P 1 0 2M' b2.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10 -b b2.qcow2 -F qcow2 t2.qcow2 1M
qemu-img resize t2.qcow2 2M; echo rc=$?
qemu-io -c 'read -P 0 1M 1M' t2.qcow2 | head -1
qemu-img map --output=json t2.qcow2
qemu-img create -q -f qcow2 -b b2.qcow2 -F qcow2 t3.qcow2 1M
qemu-img resize --preallocation=full t3.qcow2 2M; echo rc=$?
qemu-img map --output=json t3.qcow2
