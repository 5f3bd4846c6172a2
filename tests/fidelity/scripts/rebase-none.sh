# rebase-none
qemu-img create -f qcow2 base.qcow2 1M >/dev/null
qemu-io -c 'write -P 1 0 64k' base.qcow2 >/dev/null
qemu-img create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 >/dev/null
qemu-img rebase -b '' top.qcow2
qemu-img info top.qcow2 | grep -c backing
qemu-io -c 'read -P 1 0 64k' top.qcow2 | sed 's/(.*)/X/'
