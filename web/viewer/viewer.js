// The FaceSplat viewer: reads the splat and settings embedded in the page (written by
// backend/facesplat/core/viewer_html.py) and shows them with @mkkellogg/gaussian-splats-3d.
// Works from file:// with no server: no fetch, no SharedArrayBuffer, workers from Blob URLs.
import * as GaussianSplats3D from '@mkkellogg/gaussian-splats-3d';

const FOV_DEGREES = 50; // the library's perspective camera (THREE_CAMERA_FOV)
const NICE_CENTIMETRES = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500];

function fail(message) {
  window.facesplatError = String(message);
  const box = document.getElementById('facesplat-error');
  if (box) {
    box.textContent = 'Cannot show the splat: ' + message;
    box.hidden = false;
  }
}

function embeddedBytes(id) {
  const text = document.getElementById(id).textContent.replace(/\s+/g, '');
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

// A bar of a round number of centimetres, about 60-150 px long at the orbit target's distance.
function updateScaleBar(viewer, bar, label) {
  const camera = viewer.camera;
  const distance = camera.position.distanceTo(viewer.controls.target);
  const pixelsPerMetre = window.innerHeight / (2 * distance * Math.tan((FOV_DEGREES * Math.PI) / 360));
  let centimetres = NICE_CENTIMETRES[0];
  for (const c of NICE_CENTIMETRES) if ((c / 100) * pixelsPerMetre <= 150) centimetres = c;
  bar.style.width = Math.round((centimetres / 100) * pixelsPerMetre) + 'px';
  label.textContent = '\u2248 ' + centimetres + ' cm';
}

async function main() {
  const settings = JSON.parse(document.getElementById('facesplat-settings').textContent);
  const target = settings.target;
  const home = settings.camera_position;
  const viewer = new GaussianSplats3D.Viewer({
    cameraUp: [0, 0, 1], // FaceSplat's world: +Z up, the face towards -Y
    initialCameraPosition: home,
    initialCameraLookAt: target,
    sharedMemoryForWorkers: false, // SharedArrayBuffer needs cross-origin isolation, which file:// lacks
    gpuAcceleratedSort: false,
    sphericalHarmonicsDegree: settings.sh_degree,
    sceneRevealMode: GaussianSplats3D.SceneRevealMode.Instant,
    logLevel: GaussianSplats3D.LogLevel.None,
  });
  const splatBuffer = await GaussianSplats3D.SpzLoader.loadFromFileData(
    embeddedBytes('facesplat-splat').buffer, 1, 0, true, settings.sh_degree);
  // SPZ stores RUB axes and the library reads them as they are; turning the scene 180 degrees
  // about X (quaternion x, y, z, w) brings the head back into FaceSplat's frame.
  await viewer.addSplatBuffers([splatBuffer], [{ rotation: [1, 0, 0, 0] }], true, false, false);
  viewer.start();

  const bar = document.getElementById('facesplat-scalebar-bar');
  const label = document.getElementById('facesplat-scalebar-label');
  const reset = () => {
    viewer.camera.up.set(0, 0, 1);
    viewer.camera.position.fromArray(home);
    viewer.controls.target.fromArray(target);
    viewer.controls.update();
  };
  document.getElementById('facesplat-reset').addEventListener('click', reset);
  window.addEventListener('keydown', (e) => { if (e.key === 'r' || e.key === 'R') reset(); });
  window.facesplatReset = reset;

  // Ready (for people: the hint; for the tests: window.facesplatReady) a few frames after the
  // first sorted render.
  let framesSinceReady = 0;
  const tick = () => {
    updateScaleBar(viewer, bar, label);
    if (viewer.splatRenderReady && !window.facesplatReady && ++framesSinceReady > 10) {
      window.facesplatReady = true;
      document.body.dataset.ready = '1';
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}

main().catch((err) => fail(err && err.message ? err.message : err));
