# resize-raw-shrink
qemu-img create -f raw a.raw 1M >/dev/null
qemu-img resize -f raw --shrink a.raw 512k
stat -c %s a.raw
