#!/bin/sh
# Regenerates sample.mp4, the clip every emulated job returns. Run once by hand; ffmpeg is not a
# runtime dependency (the MP4 is stored in the repo). Baseline-profile H.264 in yuv420p with the moov
# atom up front (faststart) so any browser <video> can start playing and seeking over HTTP Range.
set -e
cd "$(dirname "$0")"
ffmpeg -y -loglevel error \
  -f lavfi -i "testsrc2=size=320x180:rate=24:duration=3" \
  -c:v libx264 -profile:v baseline -level 3.0 -pix_fmt yuv420p \
  -preset veryslow -crf 30 -g 24 -an -movflags +faststart \
  sample.mp4
