// The web client's words in English, Hindi and Bengali. Every string the
// page shows is here, by key; `t(key, vars)` fills in {name} placeholders.
// Error codes (a server ErrorCode's name, OFFLINE, USAGE, ...) have keys of
// their own, "error_" + code; an error with no key of its own is shown
// with the core's English words.

export const LANGUAGES = ["en", "hi", "bn"];

const STRINGS = {
  en: {
    app_name: "Dak",
    language: "Language",
    status_no_account: "Not registered",
    status_connecting: "Connecting…",
    status_online: "Online",
    status_offline: "Offline: what you type is kept and sent when the connection returns",
    status_signed_out: "This browser is no longer registered: register or link it again",
    not_persistent: "This tab keeps your chats only while it is open: reloading or closing it signs this browser out.",
    welcome_title: "Use Dak in this browser",
    phone_label: "Phone number",
    send_code: "Send code",
    code_sent: "A code was sent to {phone}. It is valid for {minutes} minutes.",
    code_label: "Code from the SMS",
    pin_label: "PIN (only if you set one)",
    verify: "Verify",
    link_intro: "Already use Dak on another device?",
    link_button: "Link this browser",
    link_code: "On your phone, run: dak devices approve {code} (valid for {minutes} minutes)",
    chats: "Chats",
    new_chat_label: "New chat (phone number)",
    start_chat: "Start chat",
    no_chats: "No chats yet",
    back: "Back to chats",
    messages: "Messages",
    message: "Message",
    send: "Send",
    you: "You",
    tick_pending: "Waiting to send",
    tick_sent: "Sent",
    tick_delivered: "Delivered",
    tick_read: "Read",
    unread: "{n} unread",
    forwarded: "Forwarded",
    forwarded_many: "Forwarded many times",
    edited: "edited",
    deleted: "This message was deleted",
    request: "Message request",
    group: "Group",
    notifications: "Turn on notifications",
    new_message: "New message from {from}",
    bundle: "Web client build",
    no_wasm: "This browser cannot run Dak Web: WebAssembly is turned off or blocked.",
    error_OFFLINE: "Cannot reach the server. Check the connection and try again.",
    error_INVALID_PHONE: "That is not a phone number. Write it with its country code, like +91 98000 00000.",
    error_CODE_WRONG: "That code is wrong. Check the SMS and try again.",
    error_CODE_EXPIRED: "That code has expired. Ask for a new one.",
    error_TOO_MANY_ATTEMPTS: "Too many wrong codes. Ask for a new one.",
    error_RATE_LIMITED: "Too many tries. Wait a few minutes and try again.",
    error_PIN_REQUIRED: "This number has a registration lock: enter its PIN.",
    error_PIN_WRONG: "The PIN is wrong.",
    error_UNKNOWN_ACCOUNT: "That number is not on Dak.",
    error_LINK_EXPIRED: "The link code expired before it was approved. Try again.",
    error_STOPPED: "Dak stopped in this tab. Reload the page.",
  },
  hi: {
    app_name: "डाक",
    language: "भाषा",
    status_no_account: "पंजीकृत नहीं",
    status_connecting: "जुड़ रहा है…",
    status_online: "ऑनलाइन",
    status_offline: "ऑफ़लाइन: आप जो लिखेंगे वह रखा जाएगा और कनेक्शन लौटने पर भेजा जाएगा",
    status_signed_out: "यह ब्राउज़र अब पंजीकृत नहीं है: इसे फिर से पंजीकृत या लिंक करें",
    not_persistent: "यह टैब आपकी चैट केवल खुले रहने तक रखता है: रीलोड करने या बंद करने पर यह ब्राउज़र साइन आउट हो जाएगा।",
    welcome_title: "इस ब्राउज़र में डाक इस्तेमाल करें",
    phone_label: "फ़ोन नंबर",
    send_code: "कोड भेजें",
    code_sent: "{phone} पर एक कोड भेजा गया है। यह {minutes} मिनट तक मान्य है।",
    code_label: "SMS में मिला कोड",
    pin_label: "पिन (केवल अगर आपने सेट किया है)",
    verify: "सत्यापित करें",
    link_intro: "क्या आप पहले से किसी दूसरे डिवाइस पर डाक इस्तेमाल करते हैं?",
    link_button: "इस ब्राउज़र को लिंक करें",
    link_code: "अपने फ़ोन पर चलाएँ: dak devices approve {code} ({minutes} मिनट तक मान्य)",
    chats: "चैट",
    new_chat_label: "नई चैट (फ़ोन नंबर)",
    start_chat: "चैट शुरू करें",
    no_chats: "अभी कोई चैट नहीं",
    back: "चैट सूची पर वापस",
    messages: "संदेश",
    message: "संदेश",
    send: "भेजें",
    you: "आप",
    tick_pending: "भेजे जाने की प्रतीक्षा में",
    tick_sent: "भेजा गया",
    tick_delivered: "पहुँच गया",
    tick_read: "पढ़ लिया गया",
    unread: "{n} अपठित",
    forwarded: "फ़ॉरवर्ड किया गया",
    forwarded_many: "कई बार फ़ॉरवर्ड किया गया",
    edited: "संपादित",
    deleted: "यह संदेश हटा दिया गया",
    request: "संदेश अनुरोध",
    group: "समूह",
    notifications: "सूचनाएँ चालू करें",
    new_message: "{from} का नया संदेश",
    bundle: "वेब क्लाइंट बिल्ड",
    no_wasm: "यह ब्राउज़र डाक वेब नहीं चला सकता: WebAssembly बंद है या रोका गया है।",
    error_OFFLINE: "सर्वर तक नहीं पहुँच पा रहे। कनेक्शन जाँचें और फिर कोशिश करें।",
    error_INVALID_PHONE: "यह फ़ोन नंबर नहीं है। देश कोड के साथ लिखें, जैसे +91 98000 00000।",
    error_CODE_WRONG: "कोड गलत है। SMS देखें और फिर कोशिश करें।",
    error_CODE_EXPIRED: "कोड की अवधि समाप्त हो गई। नया कोड माँगें।",
    error_TOO_MANY_ATTEMPTS: "बहुत सारे गलत कोड। नया कोड माँगें।",
    error_RATE_LIMITED: "बहुत सारी कोशिशें। कुछ मिनट रुककर फिर कोशिश करें।",
    error_PIN_REQUIRED: "इस नंबर पर पंजीकरण लॉक है: उसका पिन डालें।",
    error_PIN_WRONG: "पिन गलत है।",
    error_UNKNOWN_ACCOUNT: "यह नंबर डाक पर नहीं है।",
    error_LINK_EXPIRED: "लिंक कोड स्वीकृत होने से पहले समाप्त हो गया। फिर कोशिश करें।",
    error_STOPPED: "इस टैब में डाक रुक गया। पेज रीलोड करें।",
  },
  bn: {
    app_name: "ডাক",
    language: "ভাষা",
    status_no_account: "নিবন্ধিত নয়",
    status_connecting: "সংযোগ হচ্ছে…",
    status_online: "অনলাইন",
    status_offline: "অফলাইন: আপনি যা লিখবেন তা রাখা থাকবে এবং সংযোগ ফিরলে পাঠানো হবে",
    status_signed_out: "এই ব্রাউজারটি আর নিবন্ধিত নেই: আবার নিবন্ধন বা লিংক করুন",
    not_persistent: "এই ট্যাবটি খোলা থাকা পর্যন্তই আপনার চ্যাট রাখে: রিলোড বা বন্ধ করলে এই ব্রাউজার সাইন আউট হয়ে যাবে।",
    welcome_title: "এই ব্রাউজারে ডাক ব্যবহার করুন",
    phone_label: "ফোন নম্বর",
    send_code: "কোড পাঠান",
    code_sent: "{phone} নম্বরে একটি কোড পাঠানো হয়েছে। এটি {minutes} মিনিট বৈধ।",
    code_label: "SMS-এ পাওয়া কোড",
    pin_label: "পিন (শুধু যদি আপনি সেট করে থাকেন)",
    verify: "যাচাই করুন",
    link_intro: "আগে থেকেই অন্য ডিভাইসে ডাক ব্যবহার করেন?",
    link_button: "এই ব্রাউজারটি লিংক করুন",
    link_code: "আপনার ফোনে চালান: dak devices approve {code} ({minutes} মিনিট বৈধ)",
    chats: "চ্যাট",
    new_chat_label: "নতুন চ্যাট (ফোন নম্বর)",
    start_chat: "চ্যাট শুরু করুন",
    no_chats: "এখনও কোনো চ্যাট নেই",
    back: "চ্যাটের তালিকায় ফিরুন",
    messages: "বার্তা",
    message: "বার্তা",
    send: "পাঠান",
    you: "আপনি",
    tick_pending: "পাঠানোর অপেক্ষায়",
    tick_sent: "পাঠানো হয়েছে",
    tick_delivered: "পৌঁছেছে",
    tick_read: "পড়া হয়েছে",
    unread: "{n}টি অপঠিত",
    forwarded: "ফরওয়ার্ড করা",
    forwarded_many: "বহুবার ফরওয়ার্ড করা",
    edited: "সম্পাদিত",
    deleted: "এই বার্তাটি মুছে ফেলা হয়েছে",
    request: "বার্তার অনুরোধ",
    group: "গ্রুপ",
    notifications: "বিজ্ঞপ্তি চালু করুন",
    new_message: "{from}-এর নতুন বার্তা",
    bundle: "ওয়েব ক্লায়েন্ট বিল্ড",
    no_wasm: "এই ব্রাউজারে ডাক ওয়েব চলবে না: WebAssembly বন্ধ বা আটকানো আছে।",
    error_OFFLINE: "সার্ভারে পৌঁছানো যাচ্ছে না। সংযোগ দেখে আবার চেষ্টা করুন।",
    error_INVALID_PHONE: "এটি ফোন নম্বর নয়। দেশের কোডসহ লিখুন, যেমন +91 98000 00000।",
    error_CODE_WRONG: "কোডটি ভুল। SMS দেখে আবার চেষ্টা করুন।",
    error_CODE_EXPIRED: "কোডের মেয়াদ শেষ। নতুন কোড চান।",
    error_TOO_MANY_ATTEMPTS: "অনেকবার ভুল কোড। নতুন কোড চান।",
    error_RATE_LIMITED: "অনেকবার চেষ্টা হয়েছে। কয়েক মিনিট পরে আবার চেষ্টা করুন।",
    error_PIN_REQUIRED: "এই নম্বরে নিবন্ধন লক আছে: তার পিন দিন।",
    error_PIN_WRONG: "পিনটি ভুল।",
    error_UNKNOWN_ACCOUNT: "এই নম্বরটি ডাকে নেই।",
    error_LINK_EXPIRED: "অনুমোদনের আগেই লিংক কোডের মেয়াদ শেষ হয়েছে। আবার চেষ্টা করুন।",
    error_STOPPED: "এই ট্যাবে ডাক থেমে গেছে। পেজটি রিলোড করুন।",
  },
};

let current = "en";

// The language to start in: the one chosen before, else the browser's.
export function initialLanguage(saved, browser) {
  if (LANGUAGES.includes(saved)) return saved;
  for (const tag of browser) {
    const base = String(tag).toLowerCase().split("-")[0];
    if (LANGUAGES.includes(base)) return base;
  }
  return "en";
}

export function setLanguage(lang) {
  current = LANGUAGES.includes(lang) ? lang : "en";
}

export function language() {
  return current;
}

// Whether `key` has words (in English at least).
export function has(key) {
  return key in STRINGS.en;
}

export function t(key, vars = {}) {
  const template = STRINGS[current][key] ?? STRINGS.en[key] ?? key;
  return template.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
}
