// Type declarations for /client/webrtc-client.js (json-v1 §11).
// Reference: docs/client-api.md. Protocol: shared/protocols/json-v1.md.

export declare const VERSION: string;

export declare const LOGIN_STATES: Readonly<{
  /** A connection (or a reconnect attempt) is being made. */
  CONNECTING: "CONNECTING";
  /** Logged in (also after a restore, a reconnect or a push wake-up). */
  SUCCESS: "SUCCESS";
  /** The server cannot be used: address, certificate, credentials or a refused number. */
  SERVER_ACCESS: "SERVER_ACCESS";
  /** The gateway needs a number with the login and none was given. */
  DIAL_STRING_MISSING: "DIAL_STRING_MISSING";
  /** The gateway assigns numbers and this user has none. */
  NO_DIAL_STRING_FOR_USER: "NO_DIAL_STRING_FOR_USER";
  /** The connection dropped; the library reconnects with back-off. */
  CONNECTION_LOST: "CONNECTION_LOST";
  /** The gateway ended the login. */
  LOGGED_OUT_IMPLICIT: "LOGGED_OUT_IMPLICIT";
  /** logout() completed. */
  LOGGED_OUT_EXPLICIT: "LOGGED_OUT_EXPLICIT";
  /** tryRestoreLogin(): the identifier is unknown or expired. */
  LOGIN_RESTORE_FAILED: "LOGIN_RESTORE_FAILED";
}>;
export type LoginState = (typeof LOGIN_STATES)[keyof typeof LOGIN_STATES];

export declare const CALL_STATES: Readonly<{
  IDLE: "IDLE";
  DIALING: "DIALING";
  OFFERING: "OFFERING";
  RINGING: "RINGING";
  CONNECTED: "CONNECTED";
  /** The far party holds the call. */
  HOLDING: "HOLDING";
  /** This client holds the call (hold()). */
  HELD: "HELD";
  DISCONNECTED: "DISCONNECTED";
}>;
export type CallState = (typeof CALL_STATES)[keyof typeof CALL_STATES];

export declare const DISC_REASON: Readonly<{
  SUCCESS: "SUCCESS";
  DIALSTRING: "DIALSTRING";
  PERMISSION: "PERMISSION";
  CONGESTION: "CONGESTION";
  EQUIPMENT: "EQUIPMENT";
  BUSY: "BUSY";
  REDIRECTED: "REDIRECTED";
  NOTRESPONDING: "NOTRESPONDING";
  NOTSELECTED: "NOTSELECTED";
  REJECTED: "REJECTED";
  USERTERMINATED: "USERTERMINATED";
  MEDIA: "MEDIA";
  ERROR: "ERROR";
}>;
export type DiscReason = (typeof DISC_REASON)[keyof typeof DISC_REASON];

export type LoginStatusHandler = (state: LoginState) => void;
export type IncomingCallHandler = (call: WebRtcCall) => void;
export type RestoreCallHandler = (call: WebRtcCall) => void;
export type CallStateHandler = (call: WebRtcCall, state: CallState) => void;
export type MediaStateHandler = (call: WebRtcCall) => void;
/** Extension: a request the gateway refused; the call stays in its state. */
export type RequestFailedHandler = (
  call: WebRtcCall,
  request: "hold" | "retrieve" | "transfer" | "renegotiate" | "request",
  reason: DiscReason,
) => void;

/**
 * `server`: "host[:port][/path]" (path defaults to /ws) or a full ws:, wss:, http: or
 * https: URL used as is. `secure` picks wss/https for the short form.
 */
export declare class WebRtcInstance {
  constructor(
    onLoginStatus: LoginStatusHandler,
    onIncomingCall: IncomingCallHandler,
    clientDescription?: string | null,
  );

  /**
   * Log in with a username and password: they are exchanged for a token at
   * POST /api/token (Basic or Digest, as the gateway challenges); without a password the
   * connection is made without a token. Progress goes to onLoginStatus.
   */
  login(
    server: string,
    secure: boolean,
    notification: boolean,
    username: string,
    password: string,
    number?: string,
  ): void;

  /** Log in with a JWT. With neither username nor number: outgoing calls only. */
  loginWithToken(server: string, secure: boolean, token: string, username?: string, number?: string): void;

  /** Log out; every call ends (USERTERMINATED), then LOGGED_OUT_EXPLICIT. */
  logout(): void;

  /**
   * Restore a login after a page reload with getLoginIdentifier() of the earlier page.
   * Returns false when the identifier is malformed. `wakeupToken` (extension): the token
   * of a push notification (json-v1 §8).
   */
  tryRestoreLogin(
    server: string,
    secure: boolean,
    notification: boolean,
    identifier: string,
    onRestoreCall?: RestoreCallHandler,
    wakeupToken?: string,
  ): boolean;

  getLoginIdentifier(): string;
  getLocalDisplayName(): string;
  getLocalDialString(): string;
  /** A new outgoing call in IDLE. */
  createOutgoingCall(): WebRtcCall;
  /** Diagnostic messages on the browser console (default off). Applies to all instances. */
  controlLogging(enable: boolean): void;

  /** Extension: the last login state reported, null before any login. */
  getLoginState(): LoginState | null;
  /** Extension: the calls that have not ended. */
  getCalls(): WebRtcCall[];
}

/** Made by WebRtcInstance only; applications do not construct calls. */
export declare class WebRtcCall {
  private constructor();
  /** The json-v1 call identifier. */
  readonly identifier: string;

  setCallStateHandler(handler: CallStateHandler | null): void;
  setAudioElement(element: HTMLAudioElement | null): void;
  hasAudioElement(): boolean;
  /** Before dial()/answer(): the call asks for the camera. During a call: offers video. */
  setVideoElements(localElement: HTMLVideoElement | null, remoteElement: HTMLVideoElement | null): void;
  hasVideoElements(): boolean;
  setMediaStateHandler(handler: MediaStateHandler | null): void;
  /** Extension. */
  setRequestFailedHandler(handler: RequestFailedHandler | null): void;

  /** Outgoing call in IDLE: IDLE -> DIALING -> [RINGING] -> CONNECTED. */
  dial(number: string, name?: string): void;
  /** Offered incoming call: alert (the caller hears ringing) -> RINGING. */
  accept(): void;
  /** Offered or ringing incoming call -> CONNECTED. */
  answer(): void;
  /** Decline an incoming call: REJECTED (or BUSY with `busy`, an extension). */
  decline(busy?: boolean): void;
  /** Hang up or cancel; DISCONNECTED (USERTERMINATED) when the gateway confirms. */
  disconnect(): void;
  /** CONNECTED -> HELD: the microphone stops feeding this call and its audio is silent. */
  hold(): void;
  /** HELD -> CONNECTED. */
  retrieve(): void;
  /** Attended transfer to another call of this login; blind with a number (extension). */
  transfer(transferCall: WebRtcCall | string): void;
  /** One DTMF digit (0-9 * # A-D) as RFC 4733 events via RTCDTMFSender; true when queued. */
  sendDigit(digit: string): boolean;

  /** Extension: mute the microphone for this call. */
  setMuted(muted: boolean): void;
  /** Extension. */
  isMuted(): boolean;
  /** Extension: true for incoming calls. */
  isIncoming(): boolean;

  getState(): CallState;
  /** Set once DISCONNECTED, else null. */
  getDisconnectReason(): DiscReason | null;
  getLocalNumber(): string;
  getLocalName(): string;
  getRemoteNumber(): string;
  getRemoteName(): string;
  getMediaVideoActive(): boolean;
}

/** Helper (exported for tests and tools): the WebSocket and token endpoint URLs. */
export declare function serverUrls(server: string, secure: boolean): { ws: URL; token: URL };
/** Helper: parse a WWW-Authenticate header value into its challenges. */
export declare function parseChallenges(header: string | null): { scheme: string; params: Record<string, string> }[];
