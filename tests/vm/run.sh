#!/usr/bin/env bash
# Boots a Debian 6.1 kernel under qemu (TCG) with dummy_hcd, whose UDC (dummy_udc.0) and
# USB host are in the same VM, and runs examples/gadget_vm.rs (the real gadget code against
# the VM's configfs) on tests/vm/scenario. Prints the VM's serial console.
#
# usage: tests/vm/run.sh GADGET_VM_BINARY
#        tests/vm/run.sh --capture CAPTURE_VM_BINARY
# With --capture the VM loads `vivid` (V4L2 test devices) instead of running the gadget
# scenario, and runs examples/capture_vm.rs on /dev/video0 with GStreamer's libraries and
# the plugins capture uses copied in.
# Caches under target/vm/: the kernel deb, its unpacked tree, the initramfs's fixed part.
# Installs what it needs when missing (qemu-system-x86 from bookworm-backports, so it
# co-installs with the qemu-utils 10 there; busybox-static, kmod, cpio).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
mode=gadget
if [ "${1:-}" = --capture ]; then mode=capture; shift; fi
binary="$(realpath "$1")"
vm="$repo/target/vm"
mkdir -p "$vm/debs"

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && /bin/busybox --list | grep -qx cpio || need+=(busybox-static)
command -v modinfo >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # The same mirror as bookworm itself.
    mirror=$(grep -hm1 -o 'http[^ ]*/debian$\|http[^ ]*/debian ' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1 | tr -d ' ')
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" \
      > /etc/apt/sources.list.d/bookworm-backports.sources
  fi
  apt-get update -qq
  apt-get install -y -qq -t bookworm-backports "${need[@]}" >/dev/null
fi

# The kernel: the newest 6.1 Debian kernel apt knows, downloaded once.
if ! ls "$vm"/debs/linux-image-6.1.*-amd64_*.deb >/dev/null 2>&1; then
  pkg=$(apt-cache search --names-only '^linux-image-6\.1\.[0-9-]*-amd64$' | sort -V | tail -1 | cut -d' ' -f1)
  if [ -z "$pkg" ]; then apt-get update -qq; pkg=$(apt-cache search --names-only '^linux-image-6\.1\.[0-9-]*-amd64$' | sort -V | tail -1 | cut -d' ' -f1); fi
  (cd "$vm/debs" && apt-get download "$pkg" 2>/dev/null)
fi
if [ ! -d "$vm/kernel/boot" ]; then
  rm -rf "$vm/kernel"
  dpkg-deb -x "$(ls "$vm"/debs/linux-image-6.1.*-amd64_*.deb | tail -1)" "$vm/kernel"
fi
kernel=$(ls "$vm"/kernel/boot/vmlinuz-* | tail -1)
moddir=$(ls -d "$vm"/kernel/lib/modules/* | tail -1)

order=()
declare -A seen=()
add() {  # module name -> its dependencies first, then itself, copied into $modout
  local m=$1 f dep
  [ -n "${seen[$m]:-}" ] && return 0
  seen[$m]=1
  f=$(find "$moddir/kernel" -name "$m.ko" -o -name "${m//-/_}.ko" | head -1)
  [ -n "$f" ] || return 0   # built in
  for dep in $(modinfo -F depends "$f" | tr ',' ' '); do add "$dep"; done
  cp "$f" "$modout/"
  order+=("$(basename "$f" .ko)")
}

# The fixed part of the initramfs: busybox, the modules in load order, /init.
base="$vm/initramfs-base"
if [ ! -f "$base/.done" ] || [ "$here/run.sh" -nt "$base/.done" ]; then
  rm -rf "$base"
  mkdir -p "$base"/{bin,proc,sys,dev,tmp,images,lib/modules,lib64}
  modout="$base/lib/modules"
  cp /bin/busybox "$base/bin/busybox"
  for m in configfs libcomposite usb_f_mass_storage usb_f_hid dummy_hcd usb-storage sd_mod \
           sr_mod usbhid hid-generic evdev; do add "$m"; done
  printf '%s\n' "${order[@]}" > "$base/modules.order"
  cat > "$base/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read m; do
  case $m in
    usb-storage) insmod /lib/modules/$m.ko delay_use=0 ;;
    *) insmod /lib/modules/$m.ko ;;
  esac
done < /modules.order
[ -f /modules.extra ] && while read m; do insmod /lib/modules/$m.ko; done < /modules.extra
mount -t configfs none /sys/kernel/config
echo RTM-VM-START
sh /test.sh
echo "RTM-VM-END $?"
poweroff -f
INIT
  chmod +x "$base/init"
  touch "$base/.done"
fi

# The part under test: the binary, its libraries, the scenario.
work="$vm/initramfs"
rm -rf "$work"
cp -a "$base" "$work"
copy_libs() {  # the shared libraries of each file given
  local lib
  for lib in $(ldd "$@" 2>/dev/null | grep -o '/[^ :]*' | sort -u); do
    mkdir -p "$work$(dirname "$lib")"
    [ -e "$work$lib" ] || cp -L "$lib" "$work$lib"
  done
}
if [ $mode = gadget ]; then
  # Without debug info: the VM's RAM holds the initramfs, the image and its cow copy.
  strip -o "$work/gadget_vm" "$binary"
  cp "$here/scenario" "$work/scenario"
  printf 'dd if=/dev/urandom of=/images/disk.img bs=1M count=32 2>/dev/null\n/gadget_vm /images < /scenario\n' > "$work/test.sh"
  copy_libs "$binary"
else
  strip -o "$work/capture_vm" "$binary"
  copy_libs "$binary"
  # vivid and what it needs (not in the fixed part: the gadget test does not load it).
  order=()
  while read -r m; do seen[$m]=1; done < "$base/modules.order"
  modout="$work/lib/modules"
  add vivid
  printf '%s\n' "${order[@]}" > "$work/modules.extra"
  # GStreamer: the plugins capture uses, scanned in-process (no gst-plugin-scanner).
  gst=/usr/lib/x86_64-linux-gnu/gstreamer-1.0
  mkdir -p "$work/gst"
  plugins=()
  for p in coreelements video4linux2 videoconvertscale videorate app playback typefindfunctions jpeg \
           matroska png; do
    cp "$gst/libgst$p.so" "$work/gst/"
    plugins+=("$gst/libgst$p.so")
  done
  copy_libs "${plugins[@]}"
  cat > "$work/test.sh" <<'TEST'
export GST_PLUGIN_SYSTEM_PATH=/gst GST_REGISTRY_FORK=no GST_REGISTRY=/tmp/gst-registry.bin
ls /dev/video* | tr '\n' ' '; echo
TEST
  # Diagnostics (local): RTM_VM_EXTRA=FILE runs FILE instead of capture_vm, with
  # gst-launch-1.0 and v4l2-ctl in the VM.
  if [ -n "${RTM_VM_EXTRA:-}" ]; then
    for b in /usr/bin/gst-launch-1.0 /usr/bin/v4l2-ctl; do cp "$b" "$work/bin/"; copy_libs "$b"; done
    cat "$RTM_VM_EXTRA" >> "$work/test.sh"
  else
    echo '/capture_vm /dev/video0 /tmp/captures' >> "$work/test.sh"
  fi
fi
(cd "$work" && find . -path ./.done -prune -o -print | cpio -o -H newc --quiet | gzip -1) > "$vm/initramfs.gz"

# TCG is slow: GStreamer scans its plugins and vivid gives 4K frames. These are only the
# bounds of a hung VM (the tests assert on what the VM prints, never on its time): generous,
# since a loaded 2-core CI machine runs TCG several times slower (a capture run took 67 s
# idle; the old bounds were 110 s and 400 s).
limit=${RTM_VM_LIMIT:-300}
[ $mode = capture ] && limit=${RTM_VM_LIMIT:-900}
exec timeout $limit qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nographic -no-reboot \
  -kernel "$kernel" -initrd "$vm/initramfs.gz" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1"
