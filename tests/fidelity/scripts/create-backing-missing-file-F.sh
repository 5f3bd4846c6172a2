# create-backing-missing-file-F
qemu-img create -f qcow2 -b nosuch.qcow2 -F qcow2 top.qcow2; echo rc=$?
