//! Every UI string goes through `t`, with English as the key, so a translation is one table.
//! Chinese (简体中文) is the first; strings without an entry stay English.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Lang {
    #[default]
    En,
    Zh,
}

thread_local! {
    // The UI runs on one thread; each test harness has its own.
    static LANG: Cell<Lang> = const { Cell::new(Lang::En) };
}

pub fn set_lang(l: Lang) {
    LANG.with(|c| c.set(l));
}

pub fn lang() -> Lang {
    LANG.with(|c| c.get())
}

/// The current language's text for an English UI string.
pub fn t(s: &'static str) -> &'static str {
    match lang() {
        Lang::En => s,
        Lang::Zh => zh(s).unwrap_or(s),
    }
}

fn zh(s: &str) -> Option<&'static str> {
    Some(match s {
        "Data" => "数据",
        "Label" => "标注",
        "Models" => "模型",
        "Train" => "训练",
        "Runs" => "运行记录",
        "Evaluate" => "评估",
        "File" => "文件",
        "Edit" => "编辑",
        "View" => "视图",
        "Help" => "帮助",
        "Open workspace…" => "打开工作区…",
        "New workspace…" => "新建工作区…",
        "Import dataset…" => "导入数据集…",
        "Undo" => "撤销",
        "Redo" => "重做",
        "Dark theme" => "深色主题",
        "Light theme" => "浅色主题",
        "Keyboard shortcuts" => "键盘快捷键",
        "Search" => "搜索",
        "Accept" => "接受",
        "Reject" => "拒绝",
        "Flag" => "标记",
        "Previous" => "上一条",
        "Next" => "下一条",
        "Prompt" => "提问",
        "Response" => "回答",
        "Start training" => "开始训练",
        "Cancel" => "取消",
        "No workspace open" => "未打开工作区",
        "Rows" => "行",
        "Duplicates" => "重复项",
        "Personal data" => "个人信息",
        "Token lengths" => "词元长度",
        "Split" => "划分",
        "Work area" => "工作区域",
        "Activity" => "活动",
        "Send" => "发送",
        "Stop" => "停止",
        "Records" => "逐条",
        "Pairs" => "成对比较",
        "Both bad" => "都不好",
        "Tie" => "平局",
        "A workspace is a folder that holds your datasets, labels and training runs." => "工作区是一个文件夹，存放你的数据集、标注和训练记录。",
        "Add model" => "添加模型",
        "Add or select a model." => "请添加或选择一个模型。",
        "Add tag" => "添加标签",
        "Add to queue" => "加入队列",
        "Advanced" => "高级设置",
        "Annotator" => "标注人",
        "Apply" => "应用",
        "Batch" => "批次",
        "Browse…" => "浏览…",
        "Clear" => "清空",
        "Click a row to see it here." => "点击一行在此查看。",
        "Column roles" => "列的用途",
        "Count tokens" => "统计词元",
        "Dataset" => "数据集",
        "Datasets" => "数据集",
        "Device" => "设备",
        "Device: CPU" => "设备：CPU",
        "Discard edit" => "放弃修改",
        "Draft answers with model" => "用模型起草答案",
        "Draft with" => "起草模型",
        "Edited response" => "修改后的回答",
        "Export model" => "导出模型",
        "Export to folder" => "导出到文件夹",
        "Export to" => "导出到",
        "Export" => "导出",
        "File to import" => "要导入的文件",
        "Find duplicates" => "查找重复项",
        "Import" => "导入",
        "Job file" => "任务文件",
        "Keep proportions of" => "保持比例的列",
        "Keep the guesses" => "保留推测",
        "Learning rate" => "学习率",
        "Length" => "长度",
        "Loading…" => "加载中…",
        "Merge LoRA adapter into the model" => "把 LoRA 适配器合并进模型",
        "Message" => "消息",
        "Method" => "方法",
        "Model path" => "模型路径",
        "New tag" => "新标签",
        "No dataset yet: import a file to start." => "还没有数据集：导入一个文件开始。",
        "No duplicates found." => "没有发现重复项。",
        "Note" => "备注",
        "Open a dataset on the Data page first." => "请先在数据页打开一个数据集。",
        "Open or create" => "打开或新建",
        "Playground" => "试用",
        "Provenance (run.json)" => "来源记录 (run.json)",
        "Quit" => "退出",
        "Rating" => "评分",
        "Ready" => "就绪",
        "Refresh queue" => "刷新队列",
        "Refresh" => "刷新",
        "Remove duplicates" => "删除重复项",
        "Replace all with placeholders" => "全部替换为占位符",
        "Reset layout" => "重置布局",
        "Resume from the last checkpoint" => "从最近的检查点继续",
        "Roles…" => "列用途…",
        "Save edit" => "保存修改",
        "Save labels as a new dataset version" => "把标注保存为新的数据集版本",
        "Save note" => "保存备注",
        "Save preferences as a dataset" => "把偏好保存为数据集",
        "Save roles" => "保存列用途",
        "Scan for personal data" => "扫描个人信息",
        "Shape" => "格式",
        "Similarity threshold" => "相似度阈值",
        "Smoothing" => "平滑",
        "Split dataset" => "划分数据集",
        "Start from" => "起点模型",
        "Status" => "状态",
        "Tags" => "标签",
        "Teacher" => "教师模型",
        "Temperature" => "温度",
        "Tokenizer of" => "分词器来自",
        "Train on" => "训练数据",
        "Training loss" => "训练损失",
        "Version" => "版本",
        "Workspace folder" => "工作区文件夹",
        "Rule" => "规则",
        "Reward rule" => "奖励规则",
        "Judge" => "评判模型",
        _ => return None,
    })
}
