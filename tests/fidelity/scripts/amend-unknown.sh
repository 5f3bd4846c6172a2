# amend-unknown
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img amend -o nosuch=1 a.qcow2; echo rc=$?
qemu-img amend -o extended_l2=on,preallocation=full a.qcow2; echo rc=$?
