# create-backing-u
qemu-img create -f qcow2 -u -b nosuch.qcow2 -F qcow2 top.qcow2 1M; echo rc=$?
qemu-img info top.qcow2 | grep -v 'disk size'
