// A ringing tone made with WebAudio (no audio files): 440 + 480 Hz, 2 s on, 4 s off.

export class Ringer {
  #context = null;
  #gain = null;
  #oscillators = [];
  #timer = null;

  /** Create (or resume) the AudioContext; call from a user gesture so it may play. */
  prime() {
    try {
      this.#context ??= new AudioContext();
      if (this.#context.state === "suspended") this.#context.resume().catch(() => {});
    } catch {
      this.#context = null; // no WebAudio: the banner is still shown
    }
  }

  get ringing() {
    return this.#timer !== null;
  }

  start() {
    if (this.#timer !== null) return;
    this.prime();
    const ctx = this.#context;
    if (!ctx) return;
    this.#gain = ctx.createGain();
    this.#gain.gain.value = 0;
    this.#gain.connect(ctx.destination);
    this.#oscillators = [440, 480].map((hz) => {
      const osc = ctx.createOscillator();
      osc.frequency.value = hz;
      osc.connect(this.#gain);
      osc.start();
      return osc;
    });
    const burst = () => {
      const t = ctx.currentTime;
      const g = this.#gain.gain;
      g.cancelScheduledValues(t);
      g.setValueAtTime(0, t);
      g.linearRampToValueAtTime(0.12, t + 0.03);
      g.setValueAtTime(0.12, t + 1.97);
      g.linearRampToValueAtTime(0, t + 2);
    };
    burst();
    this.#timer = setInterval(burst, 6000);
  }

  stop() {
    if (this.#timer === null) return;
    clearInterval(this.#timer);
    this.#timer = null;
    for (const osc of this.#oscillators) {
      try {
        osc.stop();
      } catch {
        // already stopped
      }
      osc.disconnect();
    }
    this.#oscillators = [];
    this.#gain?.disconnect();
    this.#gain = null;
  }
}
