#!/usr/bin/env bash
# Install the system libraries and tools streamtag and its tests use, when missing (Debian/Ubuntu, as root).
#   libportaudio2      sounddevice's PortAudio (live capture)
#   libsndfile1        soundfile's decoder (wav/flac/ogg/mp3)
#   pulseaudio, pulseaudio-utils, libasound2-plugins
#                      a null sink + its monitor: real capture in tests without a microphone
#   espeak-ng, sox     test and sample audio
#   tmux               the dashboard test runs streamtag in a real terminal
#   mosquitto, mosquitto-clients, openssl
#                      a real MQTT broker (plain, password via mosquitto_passwd, TLS with a CA made by openssl)
#                      and mosquitto_sub for the notify tests
#   util-linux, iproute2   `unshare` and `ip`: the Ray tests run in a private network namespace (loopback only)
set -euo pipefail
pkgs=()
have_lib() { ldconfig -p 2>/dev/null | grep -q "$1"; }
have_lib libportaudio.so  || pkgs+=(libportaudio2)
have_lib libsndfile.so    || pkgs+=(libsndfile1)
have_lib libasound_module_pcm_pulse.so || [ -e /usr/lib/x86_64-linux-gnu/alsa-lib/libasound_module_pcm_pulse.so ] \
  || [ -e /usr/lib/aarch64-linux-gnu/alsa-lib/libasound_module_pcm_pulse.so ] || pkgs+=(libasound2-plugins)
command -v pulseaudio >/dev/null || pkgs+=(pulseaudio)
command -v paplay >/dev/null     || pkgs+=(pulseaudio-utils)
command -v espeak-ng >/dev/null  || pkgs+=(espeak-ng)
command -v sox >/dev/null        || pkgs+=(sox)
command -v tmux >/dev/null       || pkgs+=(tmux)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || pkgs+=(mosquitto)
command -v mosquitto_sub >/dev/null || pkgs+=(mosquitto-clients)
command -v openssl >/dev/null    || pkgs+=(openssl)
command -v unshare >/dev/null    || pkgs+=(util-linux)
command -v ip >/dev/null         || pkgs+=(iproute2)
[ ${#pkgs[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "system-deps: installing ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
else
  echo "system-deps: missing ${pkgs[*]}; install them (e.g. sudo apt-get install ${pkgs[*]})" >&2
  # Not fatal here: streamtag itself needs only libportaudio2/libsndfile1; tests that need the rest say so.
fi
