# create-opt-help
qemu-img create -f raw -o help
